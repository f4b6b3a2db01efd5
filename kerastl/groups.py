"""Named, ordered layer groups of a model: `stem`, stages or blocks, `head`.

A backbone's groups come from its `GroupRules`: boundaries that say where each
group ends. Boundaries are resolved on the model's graph, in model order, so
auto-named layers (`re_lu_12`, `conv2d_37`: session-wide counters) never need
to be named. Every weight-bearing layer lands in exactly one group, or
resolution raises and names the layers left over.
"""

from __future__ import annotations

import re
import weakref

import keras

from kerastl._graph import LayerGraph
from kerastl._internals import own_trainable_variables, sublayers
from kerastl.backbones.registry import find_spec, find_spec_by_class
from kerastl.backbones.rules import Boundary, GroupRules, rest, through, until

__all__ = [
    "COARSE",
    "FINE",
    "HEAD",
    "Boundary",
    "GroupRules",
    "LayerGroups",
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


class LayerGroups:
    """A model's named layer groups at both granularities, resolved once.

    Resolution walks the layer graph and its dominators, so it is done once
    per model and kept: `LayerGroups.of(model)` returns the same object every
    time (a `TransferModel` holds it as `model.groups`), and freezing, group
    optimizers, feature caching, `describe`, `GradualUnfreezing` and
    `FineTuner` all read it. Group lists are tuples: the object is immutable.

    Args:
        coarse: ordered `{name: layers}` stages.
        fine: ordered `{name: layers}` blocks.

    Example:
        >>> groups = kerastl.LayerGroups.of(model)
        >>> groups.names()
        ['stem', 'conv2', 'conv3', 'conv4', 'conv5', 'head']
        >>> groups.granularity_of("conv4_block2")
        'fine'
    """

    resolutions = 0  # how many times any model's groups were resolved (tests count it)

    def __init__(self, coarse: dict, fine: dict):
        self._groups = {
            COARSE: {name: tuple(layers) for name, layers in coarse.items()},
            FINE: {name: tuple(layers) for name, layers in fine.items()},
        }
        self._variables: dict[tuple[str, bool], dict[str, list[keras.Variable]]] = {}

    @classmethod
    def of(cls, model: keras.Model, rules: GroupRules | None = None) -> LayerGroups:
        """The groups of `model`, resolved on first use and kept for the model's life.

        Args:
            model: a `TransferModel`, a backbone made by `create_backbone`, a
                model wrapping such a backbone as `model.backbone` (e.g. a
                KerasHub task), or any functional model when `rules` is given.
            rules: group rules to use instead of the registry's (not kept).

        Returns:
            The model's `LayerGroups`.
        """
        if isinstance(model, LayerGroups):
            return model
        if rules is not None:
            return cls._resolve(model, rules)
        held = _RESOLVED.get(model)
        if held is None or held[0] != len(model.layers):  # a Sequential may have grown
            held = (len(model.layers), cls._resolve(model, None))
            _RESOLVED[model] = held
        return held[1]

    @classmethod
    def _resolve(cls, model, rules) -> LayerGroups:
        LayerGroups.resolutions += 1
        backbone = getattr(model, "backbone", None)
        if isinstance(backbone, keras.Model) and any(layer is backbone for layer in model.layers):
            # A model may declare its backbone's rules as `group_rules` (None:
            # an unregistered backbone, kept as one group), as TransferModel does.
            declared = hasattr(model, "group_rules")
            rules = rules or (model.group_rules if declared else None)
            if rules is None and declared:
                whole = {"backbone": [backbone]}
                return cls(_with_head(model, backbone, whole), _with_head(model, backbone, whole))
            rules = rules or _registered_rules(backbone)
            fine = resolve_groups(backbone, rules)
            coarse = merge_stages(fine, rules.stages)
            return cls(_with_head(model, backbone, coarse), _with_head(model, backbone, fine))
        rules = rules or _registered_rules(model)
        fine = resolve_groups(model, rules)
        return cls(merge_stages(fine, rules.stages), fine)

    def __getitem__(self, granularity: str) -> dict[str, tuple[keras.layers.Layer, ...]]:
        """`{group name: layers}` in model order at `granularity`."""
        return dict(self._groups[_check_granularity(granularity)])

    def names(self, granularity: str = COARSE) -> list[str]:
        """The group names in model order."""
        return list(self._groups[_check_granularity(granularity)])

    def granularity_of(self, group: str) -> str:
        """`"coarse"` or `"fine"`: which kind of group `group` names (coarse preferred).

        Raises:
            ValueError: `group` names no group; the valid names are listed.
        """
        for granularity in (COARSE, FINE):
            if group in self._groups[granularity]:
                return granularity
        raise ValueError(
            f"Unknown layer group {group!r}. Valid groups: {self.names(COARSE)} or fine "
            f"groups {self.names(FINE)}. Received: {group!r}."
        )

    def check(self, names, granularity: str, what: str) -> None:
        """Raises if any of `names` is not a group at `granularity`, naming the valid ones."""
        unknown = [name for name in names if name not in self._groups[granularity]]
        if unknown:
            raise ValueError(
                f"Unknown layer group{'s' if len(unknown) > 1 else ''} "
                f"{unknown if len(unknown) > 1 else repr(unknown[0])}. Valid groups "
                f"({granularity}): {self.names(granularity)}. Received: {what}."
            )

    def variables(
        self, granularity: str = COARSE, *, batch_norm: bool = True
    ) -> dict[str, list[keras.Variable]]:
        """Each group's trainable-kind variables (frozen or not), in model order.

        BatchNorm moving statistics and other non-trainable state are left out.

        Args:
            granularity: `"coarse"` or `"fine"`.
            batch_norm: include BatchNormalization scales and offsets.

        Returns:
            An ordered dict from group name to its variables.
        """
        key = (_check_granularity(granularity), batch_norm)
        if key not in self._variables:
            self._variables[key] = _variables_of(self._groups[granularity], batch_norm)
        return {name: list(variables) for name, variables in self._variables[key].items()}

    def forget_variables(self) -> None:
        """Drops the kept variable lists: layers gained variables (LoRA adapters)."""
        self._variables.clear()


# Resolved groups, per model, for as long as the model lives.
_RESOLVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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
    groups = LayerGroups.of(model, rules)[granularity]
    return {name: list(layers) for name, layers in groups.items()}


def _check_granularity(granularity: str) -> str:
    if granularity not in (COARSE, FINE):
        raise ValueError(
            f"`granularity` must be 'coarse' or 'fine'. Received: granularity={granularity!r}."
        )
    return granularity


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
        model: a `TransferModel`, a registered backbone, a model wrapping one,
            or its `LayerGroups`.
        granularity: `"coarse"` or `"fine"`.
        batch_norm: include BatchNormalization scales and offsets.

    Returns:
        An ordered dict from group name to its variables.

    Example:
        >>> [v.path for v in group_variables(model)["head"]]
        ['head_dense/kernel', 'head_dense/bias']
    """
    return LayerGroups.of(model).variables(granularity, batch_norm=batch_norm)


def _variables_of(groups: dict, batch_norm: bool) -> dict[str, list[keras.Variable]]:
    result: dict[str, list[keras.Variable]] = {}
    seen: set[int] = set()
    for name, layers in groups.items():
        variables = []
        for layer in layers:
            for sublayer in sublayers(layer):
                if not batch_norm and isinstance(sublayer, keras.layers.BatchNormalization):
                    continue
                for variable in own_trainable_variables(sublayer):
                    if id(variable) not in seen:
                        seen.add(id(variable))
                        variables.append(variable)
        result[name] = variables
    return result


def _has_weights(op) -> bool:
    return isinstance(op, keras.layers.Layer) and bool(op.weights)
