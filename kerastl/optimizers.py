"""Per-layer-group optimizers on Keras's own `MultiOptimizer` / `OptimizerMap`.

`group_optimizer` maps named layer groups to optimizers; `discriminative_optimizer`
builds one optimizer per group with learning rates spread across the groups
(fastai) or decayed layer by layer (BERT/ViT fine-tuning). The map is keyed by
variable paths, so it survives `model.save` / `load_model` (a callable
selector would not). Two kinds of path change when Keras builds the model
again from its config, and get a pattern instead (`OptimizerMap` tries every
key as a pattern when no key equals a path):

- a weight its layer created without a name (ConvNeXt's layer scales): Keras
  numbers those `variable`, `variable_1`, ... from one count for the whole
  process, so a model loaded after another was built numbers them anew;
- a weight of a model nested in the model (ConvNeXt's stem and downsampling
  blocks are `Sequential`s): built inside it, its path starts with that
  model's name; deserialized, Keras builds its layers on their own, without it.

Weight decay skips biases and norm scales/offsets (1-D variables, and any
variable named `bias`, `gamma` or `beta`, such as multi-head attention's
`(heads, head_dim)` biases) by routing them to a twin of their group's
optimizer with `weight_decay=None`.
Keras's `exclude_from_weight_decay()` does the same at run time but is not
part of the optimizer's config, so a reloaded model would decay them again
(`tests/test_optimizers.py` shows it); the twin is plain config and reloads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import keras

from kerastl._internals import sublayers
from kerastl.distribute.keras_fixes import GroupOptimizer
from kerastl.groups import COARSE, FINE, LayerGroups, group_variables, layer_groups

Optimizer = keras.optimizers.Optimizer


def group_optimizer(
    model: keras.Model,
    optimizers: Mapping[str | Sequence[str], Optimizer],
    default: Optimizer | None = None,
    *,
    granularity: str = COARSE,
    decay_1d: bool = False,
) -> keras.optimizers.MultiOptimizer:
    """Returns a `MultiOptimizer` giving each named layer group its own optimizer.

    Args:
        model: a `TransferModel` or a registered backbone.
        optimizers: `{group name or list of names: optimizer}`; any Keras
            optimizer class. An instance given for several entries serves them all.
        default: the optimizer for groups not named; required unless every
            group is named.
        granularity: which groups the names refer to (`"coarse"` or `"fine"`).
        decay_1d: also apply weight decay to biases and norm scales/offsets
            (see `is_decay_exempt`). By default they get none.

    Returns:
        A `GroupOptimizer` (a `keras.optimizers.MultiOptimizer` where a group
        without gradients rests) over an `OptimizerMap` keyed by variable
        paths (a pattern where loading changes a path); pass it to `model.compile`.

    Raises:
        ValueError: an unknown group name (the valid ones are listed), a group
            named twice, or groups left without an optimizer and no `default`.

    Example:
        >>> opt = kerastl.group_optimizer(
        ...     model, {"head": keras.optimizers.Adam(1e-3)}, default=keras.optimizers.Adam(1e-5))
        >>> model.compile(opt, loss)
    """
    variables = group_variables(model, granularity)
    assignment: dict[str, Optimizer] = {}
    for key, optimizer in optimizers.items():
        names = [key] if isinstance(key, str) else list(key)
        _check_optimizer(optimizer, f"optimizers[{key!r}]")
        LayerGroups.of(model).check(names, granularity, f"optimizers keys {list(optimizers)}")
        for name in names:
            if name in assignment:
                raise ValueError(f"Layer group {name!r} is given two optimizers.")
            assignment[name] = optimizer
    unassigned = [name for name in variables if name not in assignment]
    if default is None and unassigned:
        raise ValueError(
            f"Layer groups {unassigned} have no optimizer. Name them or pass `default=`."
        )
    if default is not None:
        _check_optimizer(default, "default")

    twins: dict[int, Optimizer] = {}
    optimizer_map: dict[str, Optimizer] = {}
    nested = {
        layer.name
        for layer in sublayers(model, include_self=False)
        if isinstance(layer, keras.Model)
    }
    for name, group_vars in variables.items():
        optimizer = assignment.get(name, default)
        for variable in group_vars:
            target = optimizer
            if not decay_1d and optimizer.weight_decay and is_decay_exempt(variable):
                if id(optimizer) not in twins:
                    twins[id(optimizer)] = _without_weight_decay(optimizer)
                target = twins[id(optimizer)]
            key = _map_key(variable, nested)
            if key != variable.path:  # a pattern, for a weight's changing path
                if optimizer_map.setdefault(key, target) is not target:
                    raise ValueError(
                        f"The unnamed weights of layer {variable.path.rpartition('/')[0]!r} "
                        "need two optimizers (weight decay on one, not the other), which "
                        "a loaded model could not tell apart. Pass decay_1d=True or an "
                        "optimizer without weight_decay for its group."
                    )
                continue
            if target is default:
                continue  # the map's default covers it
            optimizer_map[key] = target
    map_default = default if default is not None else next(iter(assignment.values()))
    return GroupOptimizer(keras.optimizers.OptimizerMap(map_default, optimizer_map))


# The name Keras gives a weight created without one (a process-wide count).
_UNNAMED = r"variable(_\d+)?"


def _map_key(variable: keras.Variable, nested: set[str]) -> str:
    """`variable`'s `OptimizerMap` key: its path, or a pattern matching every path
    it can have when the model is deserialized (see the module docstring)."""
    *outer, name = variable.path.split("/")
    prefix = ""
    while len(outer) > 1 and outer[0] in nested:
        prefix += f"(?:{re.escape(outer.pop(0))}/)?"
    last = _UNNAMED if re.fullmatch(_UNNAMED, name) else re.escape(name)
    key = prefix + "/".join([*map(re.escape, outer), last])
    return variable.path if key == re.escape(variable.path) else key


def discriminative_optimizer(
    model: keras.Model,
    base_lr: float | None = None,
    *,
    lr_mult: float | None = None,
    decay: float | None = None,
    optimizer: Optimizer | type[Optimizer] = keras.optimizers.Adam,
    schedule: Callable[[float], keras.optimizers.schedules.LearningRateSchedule] | None = None,
    granularity: str | None = None,
    decay_1d: bool = False,
) -> keras.optimizers.MultiOptimizer:
    """One optimizer per group, learning rates rising from the input to the head.

    Two rules (give exactly one of `lr_mult` / `decay`; `lr_mult=10` if neither):

    - spread (fastai `slice(base_lr / lr_mult, base_lr)`): over `n` groups,
      `lr_i = (base_lr / lr_mult) * lr_mult ** (i / (n - 1))`, so the first
      group gets `base_lr / lr_mult` and the head `base_lr`. Coarse groups.
    - layer-wise decay: `lr_i = base_lr * decay ** (last - i)`, the head
      (last) at `base_lr`. Fine groups (one per block or transformer layer).

    Args:
        model: a `TransferModel` or a registered backbone.
        base_lr: the head's (peak) learning rate.
        lr_mult: ratio between the head's and the first group's rate.
        decay: per-group decay factor in (0, 1].
        optimizer: an optimizer class or a configured instance used as a
            template (its other settings, e.g. `weight_decay`, are kept).
        schedule: maps a group's peak rate to a `LearningRateSchedule`, e.g.
            `kerastl.training.schedules.warmup_cosine(total_steps=1000, warmup_steps=100)`.
        granularity: override the groups used (default: coarse for the
            spread, fine for the decay).
        decay_1d: see `group_optimizer`.

    Returns:
        A `MultiOptimizer` (see `group_optimizer`).

    Example:
        >>> opt = kerastl.discriminative_optimizer(model, base_lr=1e-3, decay=0.65)
    """
    if isinstance(base_lr, bool) or not isinstance(base_lr, int | float) or not base_lr > 0:
        given_an_optimizer = isinstance(base_lr, Optimizer | type)
        raise ValueError(
            "`base_lr` must be a positive number"
            + (" (an optimizer goes in `optimizer=`)" if given_an_optimizer else "")
            + f". Received: base_lr={base_lr!r}."
        )
    if lr_mult is not None and decay is not None:
        raise ValueError(
            "Give `lr_mult` (spread) or `decay` (layer-wise decay), not both. "
            f"Received: lr_mult={lr_mult}, decay={decay}."
        )
    if decay is not None and not 0 < decay <= 1:
        raise ValueError(f"`decay` must be in (0, 1]. Received: decay={decay}.")
    if decay is None and lr_mult is None:
        lr_mult = 10.0
    if lr_mult is not None and not lr_mult >= 1:
        raise ValueError(f"`lr_mult` must be >= 1. Received: lr_mult={lr_mult}.")
    granularity = granularity or (FINE if decay is not None else COARSE)
    rates = group_learning_rates(
        model, base_lr, lr_mult=lr_mult, decay=decay, granularity=granularity
    )
    optimizers = {
        name: clone_optimizer(optimizer, schedule(rate) if schedule else rate, name=f"{name}_opt")
        for name, rate in rates.items()
    }
    return group_optimizer(model, optimizers, granularity=granularity, decay_1d=decay_1d)


def group_learning_rates(
    model: keras.Model,
    base_lr: float,
    *,
    lr_mult: float | None = None,
    decay: float | None = None,
    granularity: str = COARSE,
) -> dict[str, float]:
    """Returns the peak learning rate of each group under the spread or the decay rule.

    Example:
        >>> group_learning_rates(model, 1e-3, decay=0.5, granularity="fine")["head"]
        0.001
    """
    names = list(layer_groups(model, granularity))
    last = len(names) - 1
    if decay is not None:
        return {name: base_lr * decay ** (last - i) for i, name in enumerate(names)}
    if last == 0:
        return {names[0]: base_lr}
    low = base_lr / lr_mult
    return {name: low * lr_mult ** (i / last) for i, name in enumerate(names)}


def clone_optimizer(
    template: Optimizer | type[Optimizer],
    learning_rate,
    name: str | None = None,
) -> Optimizer:
    """A fresh optimizer with `template`'s settings and a new learning rate.

    Args:
        template: an optimizer class or instance.
        learning_rate: a float or a `LearningRateSchedule`.
        name: the new optimizer's name.

    Returns:
        An unbuilt optimizer.
    """
    if isinstance(template, type):
        if not issubclass(template, Optimizer):
            raise TypeError(f"`optimizer` must be a Keras optimizer. Received: {template!r}.")
        return template(learning_rate=learning_rate, **({"name": name} if name else {}))
    _check_optimizer(template, "optimizer")
    config = template.get_config()
    config["learning_rate"] = learning_rate
    if name:
        config["name"] = name
    return template.__class__.from_config(config)


_EXEMPT_NAMES = ("bias", "gamma", "beta")


def is_decay_exempt(variable: keras.Variable) -> bool:
    """Whether weight decay skips `variable`: 1-D, or a bias / norm scale / offset.

    Example:
        >>> is_decay_exempt(model.get_layer("head_dense").bias)
        True
    """
    return len(variable.shape) <= 1 or variable.name in _EXEMPT_NAMES


def _without_weight_decay(optimizer: Optimizer) -> Optimizer:
    config = optimizer.get_config()
    # AdamW refuses None (its decay must be a float); 0.0 decays nothing.
    config["weight_decay"] = 0.0 if isinstance(optimizer, keras.optimizers.AdamW) else None
    config["name"] = f"{optimizer.name}_no_decay"
    if isinstance(config.get("learning_rate"), dict):  # a serialized schedule
        config["learning_rate"] = keras.optimizers.schedules.deserialize(config["learning_rate"])
    return optimizer.__class__.from_config(config)


def _check_optimizer(optimizer, where: str) -> None:
    if not isinstance(optimizer, Optimizer) or isinstance(
        optimizer, (keras.optimizers.MultiOptimizer, keras.optimizers.LossScaleOptimizer)
    ):
        raise TypeError(
            f"{where} must be a plain Keras optimizer instance (not a MultiOptimizer "
            f"or LossScaleOptimizer). Received: {optimizer!r}."
        )
    if optimizer.built:
        raise ValueError(
            f"{where} is already built; pass a fresh optimizer. Received: {optimizer!r}."
        )
