"""Freezing at layer-group boundaries: `freeze`, `freeze_to`, `unfreeze`.

Every function here goes through the same step (`set_trainable_groups`,
on groups resolved once per call), which sets the flags, keeps
BatchNormalization in inference mode where it must be, and recompiles the
model with a fresh optimizer: in Keras, `trainable` changes take effect only
at `compile()`, and a built optimizer refuses a new variable list.

Layers the model's output does not depend on (`TransferModel.unused_layers`:
a text backbone's pooler under `cls`/`mean` pooling) stay frozen in every
group.

BatchNormalization stays frozen (inference mode, statistics fixed) even in
trainable groups unless `train_bn=True`: `fit` ignores `training=False`
passed when calling a nested backbone (keras-team/keras#20285), so
`trainable=False` on the BN layer is the only switch that holds.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import keras

from kerastl._adapter_names import is_adapter
from kerastl._internals import own_variables, sublayers
from kerastl.groups import COARSE, HEAD, LayerGroups, group_variables, layer_groups


def set_trainable_groups(
    model: keras.Model,
    trainable: Iterable[str],
    *,
    train_bn: bool = False,
    granularity: str = COARSE,
    recompile: bool = True,
) -> list[str]:
    """Makes exactly the named groups trainable; every other group is frozen.

    Args:
        model: a `TransferModel` or a registered backbone.
        trainable: names of the groups to train.
        train_bn: also train BatchNormalization layers (their statistics
            then update) inside the trainable groups.
        granularity: which group names `trainable` refers to.
        recompile: if the model is compiled, recompile it with a fresh copy
            of its optimizer, loss and metrics, carrying over the optimizer
            state (slots such as Adam's moments, iteration counts) of every
            variable that was already training; newly trainable variables
            start with fresh slots. If False, the model is marked uncompiled,
            so the next `fit` raises until `compile()` is called.

    Returns:
        The names of the trainable groups, in model order.

    Example:
        >>> set_trainable_groups(model, ["conv5", "head"])
    """
    groups = layer_groups(model, granularity)
    wanted = list(trainable)
    LayerGroups.of(model).check(wanted, granularity, f"trainable={wanted}")
    return _apply_trainable(model, groups, wanted, train_bn, recompile)


def _apply_trainable(model, groups, wanted, train_bn: bool, recompile: bool) -> list[str]:
    """`set_trainable_groups` on groups already resolved and names already checked."""
    model.trainable = True
    for name, layers in groups.items():
        train = name in wanted
        for layer in layers:
            layer.trainable = train
            if train and not train_bn:
                _freeze_batch_norm(layer)
        if train:
            _train_only_adapters(layers)
    unused = getattr(model, "unused_layers", None)
    for layer in unused() if unused is not None else ():
        layer.trainable = False  # no gradient reaches it (a pooler that pooling skips)
    _refresh_compilation(model, recompile)
    return [name for name in groups if name in wanted]


def freeze(model: keras.Model, *, train_bn: bool = False, recompile: bool = True) -> list[str]:
    """Freezes the backbone; only the `head` group (if any) trains.

    Args:
        model: a `TransferModel` or a registered backbone.
        train_bn: see `set_trainable_groups`.
        recompile: see `set_trainable_groups`.

    Returns:
        The trainable group names (`["head"]`, or `[]` for a bare backbone).

    Example:
        >>> kerastl.freeze(model)
        ['head']
    """
    groups = layer_groups(model)
    return _apply_trainable(model, groups, [HEAD] if HEAD in groups else [], train_bn, recompile)


def freeze_to(
    model: keras.Model,
    group: str | int,
    *,
    train_bn: bool = False,
    granularity: str = COARSE,
    recompile: bool = True,
) -> list[str]:
    """Freezes every group before `group`; `group` and all after it train.

    Args:
        model: a `TransferModel` or a registered backbone.
        group: a group name, or its index in model order (negative counts
            from the end, as in fastai: `freeze_to(model, -2)` trains the last two).
        train_bn: see `set_trainable_groups`.
        granularity: which groups `group` refers to.
        recompile: see `set_trainable_groups`.

    Returns:
        The trainable group names.

    Example:
        >>> kerastl.freeze_to(model, "conv5")
        ['conv5', 'head']
    """
    groups = layer_groups(model, granularity)
    names = list(groups)
    if isinstance(group, bool) or not isinstance(group, (str, int)):
        raise TypeError(f"`group` must be a group name or an index. Received: group={group!r}.")
    if isinstance(group, int):
        if not -len(names) <= group < len(names):
            raise ValueError(
                f"`group` index out of range for {len(names)} groups {names}. "
                f"Received: group={group}."
            )
        start = group % len(names)
    else:
        LayerGroups.of(model).check([group], granularity, f"group={group!r}")
        start = names.index(group)
    return _apply_trainable(model, groups, names[start:], train_bn, recompile)


def unfreeze(model: keras.Model, *, train_bn: bool = False, recompile: bool = True) -> list[str]:
    """Makes every group trainable (BatchNormalization stays frozen unless `train_bn`).

    Args:
        model: a `TransferModel` or a registered backbone.
        train_bn: see `set_trainable_groups`.
        recompile: see `set_trainable_groups`.

    Returns:
        All group names.

    Example:
        >>> kerastl.unfreeze(model)
    """
    groups = layer_groups(model)
    return _apply_trainable(model, groups, list(groups), train_bn, recompile)


def trainable_groups(model: keras.Model, granularity: str = COARSE) -> dict[str, str]:
    """Returns each group's state: `"trainable"`, `"frozen"`, `"lora"` or `"partial"`.

    BatchNormalization layers are left out of the count (they stay frozen in
    trainable groups by default; see the module docstring). `"lora"`: only
    the group's LoRA adapters train (`kerastl.lora`).

    Args:
        model: a `TransferModel` or a registered backbone.
        granularity: `"coarse"` or `"fine"`.

    Returns:
        An ordered dict from group name to state.

    Example:
        >>> kerastl.freeze(model); trainable_groups(model)["head"]
        'trainable'
    """
    trainable_ids = {id(v) for v in model.trainable_weights}
    states = {}
    for name, variables in group_variables(model, granularity, batch_norm=False).items():
        training = [v for v in variables if id(v) in trainable_ids]
        count = len(training)
        if count == 0:
            states[name] = "frozen"
        elif all(is_adapter(v) for v in training):
            states[name] = "lora"
        else:
            states[name] = "trainable" if count == len(variables) else "partial"
    return states


def _train_only_adapters(layers) -> None:
    """A group that holds LoRA adapters trains only them (`kerastl.peft`): Keras
    freezes an adapted kernel, but setting `trainable` on the layer again (as
    every freezing call does) would unfreeze it, and its bias never is."""
    inner = [sublayer for layer in layers for sublayer in sublayers(layer)]
    if not any(getattr(sublayer, "lora_enabled", False) for sublayer in inner):
        return
    for sublayer in inner:
        for variable in own_variables(sublayer):
            variable.trainable = is_adapter(variable) and sublayer.trainable


def _freeze_batch_norm(layer: keras.layers.Layer) -> None:
    for sublayer in sublayers(layer):
        if isinstance(sublayer, keras.layers.BatchNormalization):
            sublayer.trainable = False


def _refresh_compilation(model: keras.Model, recompile: bool) -> None:
    if not getattr(model, "compiled", False):
        return
    if recompile:
        try:
            config = model.get_compile_config()
            if config is not None:
                state = _optimizer_state(model.optimizer)
                model.compile_from_config(config)
                _restore_optimizer_state(model.optimizer, state)
                return
            reason = "it has no compile config"
        except Exception as error:  # a loss or metric that does not serialize
            reason = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"Trainable flags changed but model {model.name!r} could not be recompiled "
            f"automatically ({reason}). Call model.compile(...) before the next fit.",
            stacklevel=3,
        )
    model.compiled = False


def _optimizer_state(optimizer) -> dict[str, object]:
    """Optimizer variables by path: `{name}/{variable path}_{slot}`, `{name}/iteration`.
    A recompiled optimizer from the same config has the same paths."""
    if optimizer is None or not optimizer.built:
        return {}
    return {variable.path: variable.numpy() for variable in optimizer.variables}


def _restore_optimizer_state(optimizer, state: dict[str, object]) -> None:
    if not state or optimizer is None or not optimizer.built:
        return
    for variable in optimizer.variables:
        value = state.get(variable.path)
        if value is not None and tuple(value.shape) == tuple(variable.shape):
            variable.assign(value)
