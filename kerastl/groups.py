"""Named, ordered layer groups of a model: `stem`, stages or blocks, `head`.

A backbone's groups come from its `GroupRules`: boundaries that say where each
group ends. Boundaries are resolved on the model's graph, in model order, so
auto-named layers (`re_lu_12`, `conv2d_37`: session-wide counters) never need
to be named. Every weight-bearing layer lands in exactly one group, or
resolution raises and names the layers left over.
"""

from __future__ import annotations

import re

import keras

from kerastl._graph import LayerGraph
from kerastl.backbones.registry import find_spec, find_spec_by_class
from kerastl.backbones.rules import Boundary, GroupRules, rest, through, until

__all__ = [
    "COARSE",
    "FINE",
    "HEAD",
    "Boundary",
    "GroupRules",
    "group_variables",
    "layer_groups",
    "merge_stages",
    "resolve_groups",
    "rest",
    "through",
    "until",
]

COARSE = "coarse"
FINE = "fine"
HEAD = "head"


def layer_groups(
    model: keras.Model,
    granularity: str = COARSE,
    rules: GroupRules | None = None,
) -> dict[str, list[keras.layers.Layer]]:
    """Returns the model's named layer groups, ordered from input to output.

    Args:
        model: a `TransferModel`, a backbone made by `create_backbone`, a
            model wrapping such a backbone as `model.backbone` (e.g. a KerasHub
            task), or any functional model when `rules` is given.
        granularity: `"coarse"` (stages) or `"fine"` (blocks).
        rules: group rules to use instead of the registry's.

    Returns:
        An ordered dict from group name to its layers. A `TransferModel` has
        its backbone's groups followed by `"head"`.

    Example:
        >>> model = kerastl.TransferModel("resnet50", num_classes=5)
        >>> list(kerastl.layer_groups(model))
        ['stem', 'conv2', 'conv3', 'conv4', 'conv5', 'head']
    """
    if granularity not in (COARSE, FINE):
        raise ValueError(
            f"`granularity` must be 'coarse' or 'fine'. Received: granularity={granularity!r}."
        )
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, keras.Model) and any(layer is backbone for layer in model.layers):
        if getattr(model, "_kerastl_transfer", False):
            rules = rules or model.group_rules
            if rules is None:  # an unregistered backbone is one group
                return _with_head(model, backbone, {"backbone": [backbone]})
        return _with_head(model, backbone, _backbone_groups(backbone, granularity, rules))
    return _backbone_groups(model, granularity, rules)


def _backbone_groups(model, granularity, rules):
    if rules is None:
        rules = _registered_rules(model)
    fine = resolve_groups(model, rules)
    return fine if granularity == FINE else merge_stages(fine, rules.stages)


def _registered_rules(model) -> GroupRules:
    spec = find_spec(model.name) or find_spec_by_class(type(model).__name__)
    if spec is None:
        raise ValueError(
            f"No group rules are registered for a model named {model.name!r}. Build it "
            "with `kerastl.create_backbone`, or pass `rules=GroupRules(...)`. "
            f"Received: model.name={model.name!r}."
        )
    return spec.groups


def _with_head(model, backbone, groups):
    head = []
    leading = []
    seen_backbone = False
    for layer in model.layers:
        if layer is backbone:
            seen_backbone = True
        elif seen_backbone:
            head.append(layer)
        else:
            leading.append(layer)  # input and in-model preprocessing
    groups = dict(groups)
    first = next(iter(groups))
    groups[first] = leading + groups[first]
    groups[HEAD] = head
    return groups


def resolve_groups(model: keras.Model, rules: GroupRules) -> dict[str, list[keras.layers.Layer]]:
    """Resolves `rules` on `model` into fine groups; see `layer_groups`.

    Args:
        model: a functional Keras model.
        rules: its group rules.

    Returns:
        An ordered dict from group name to layers.

    Raises:
        ValueError: a required boundary matches no layer, two boundaries give
            the same name, a group is empty, or weight-bearing layers are left
            outside every group (they are named).
    """
    graph = LayerGraph(model, expand=rules.expand)
    ops = graph.operations
    ends: dict[str, list[int]] = {}
    rest_name = None
    for boundary in rules.boundaries:
        if boundary.rest:
            rest_name = boundary.name
            continue
        for name, positions in _boundary_ends(model, graph, boundary).items():
            if name in ends:
                raise ValueError(
                    f"Two group boundaries of model {model.name!r} give the group name "
                    f"{name!r}. Received: pattern={boundary.pattern!r}."
                )
            ends[name] = positions

    assigned: set[int] = set()
    groups: dict[str, list[int]] = {}
    for name, positions in sorted(ends.items(), key=lambda item: max(item[1])):
        members = set().union(*(graph.ancestors(p) for p in positions)) - assigned
        if not members:
            raise ValueError(
                f"Group {name!r} of model {model.name!r} is empty: its boundary lies "
                "inside an earlier group. Check the order of the boundaries."
            )
        groups[name] = sorted(members)
        assigned |= members

    leftover = [i for i in range(len(ops)) if i not in assigned]
    if rest_name is not None and any(_has_weights(ops[i]) for i in leftover):
        groups[rest_name] = leftover
        leftover = []
    uncovered = [ops[i].name for i in leftover if _has_weights(ops[i])]
    if uncovered:
        raise ValueError(
            f"Layers of model {model.name!r} with weights are not covered by any group: "
            f"{uncovered[:20]}{' ...' if len(uncovered) > 20 else ''}. Received "
            f"boundaries: {[b.pattern for b in rules.boundaries]}."
        )
    if groups:
        last = next(reversed(groups))
        groups[last] = groups[last] + leftover
    return {
        name: [ops[i] for i in members if isinstance(ops[i], keras.layers.Layer)]
        for name, members in groups.items()
    }


def _boundary_ends(model, graph: LayerGraph, boundary: Boundary) -> dict[str, list[int]]:
    matches = []
    for position, op in enumerate(graph.operations):
        match = re.fullmatch(boundary.pattern, op.name)
        if match is not None:
            matches.append((position, match))
    if not matches:
        if boundary.optional:
            return {}
        raise ValueError(
            f"Group boundary {boundary.pattern!r} matches no layer of model "
            f"{model.name!r}. Received: pattern={boundary.pattern!r}."
        )
    if boundary.until:
        return {boundary.name: [graph.immediate_dominator(matches[0][0])]}
    ends: dict[str, list[int]] = {}
    for position, match in matches:
        name = match.group(1) if boundary.name is None else match.expand(boundary.name)
        ends.setdefault(name, []).append(position)
    return ends


def merge_stages(
    fine: dict[str, list[keras.layers.Layer]], stages: tuple[tuple[str, str], ...]
) -> dict[str, list[keras.layers.Layer]]:
    """Merges consecutive fine groups into coarse stages.

    Args:
        fine: fine groups, in model order.
        stages: `(regex, name)` pairs, as in `GroupRules.stages`.

    Returns:
        The coarse groups, in model order.
    """
    coarse: dict[str, list[keras.layers.Layer]] = {}
    previous = None
    for name, layers in fine.items():
        target = name
        for pattern, stage in stages:
            match = re.fullmatch(pattern, name)
            if match is not None:
                target = match.expand(stage)
                break
        if target in coarse and target != previous:
            raise ValueError(
                f"Stage {target!r} would merge groups that are not consecutive "
                f"(at fine group {name!r}). Received: stages={stages}."
            )
        coarse.setdefault(target, []).extend(layers)
        previous = target
    return coarse


def group_variables(
    model: keras.Model, granularity: str = COARSE, *, batch_norm: bool = True
) -> dict[str, list[keras.Variable]]:
    """Returns each group's trainable-kind variables (frozen or not), in model order.

    BatchNorm moving statistics and other non-trainable state are left out.

    Args:
        model: a `TransferModel`, a registered backbone, or a model wrapping one.
        granularity: `"coarse"` or `"fine"`.
        batch_norm: include BatchNormalization scales and offsets.

    Returns:
        An ordered dict from group name to its variables.

    Example:
        >>> [v.path for v in group_variables(model)["head"]]
        ['head_dense/kernel', 'head_dense/bias']
    """
    result: dict[str, list[keras.Variable]] = {}
    seen: set[int] = set()
    for name, layers in layer_groups(model, granularity).items():
        variables = []
        for layer in layers:
            for sublayer in layer._flatten_layers(include_self=True):
                if not batch_norm and isinstance(sublayer, keras.layers.BatchNormalization):
                    continue
                for variable in sublayer._trainable_variables:
                    if id(variable) not in seen:
                        seen.add(id(variable))
                        variables.append(variable)
        result[name] = variables
    return result


def _has_weights(op) -> bool:
    return isinstance(op, keras.layers.Layer) and bool(op.weights)
