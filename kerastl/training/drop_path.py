"""Stochastic depth ("drop path") in the backbone blocks a stage trains.

EfficientNet-style backbones (Keras Applications EfficientNet and
EfficientNetV2, KerasHub's EfficientNet, kerastl's Lite0) drop a residual
block's branch for a whole example with a `Dropout` whose noise is shared
over every position (`noise_shape=(None, 1, 1, 1)`), at a rate that grows
with depth. Keras applies it in training whether or not the block is frozen,
so a frozen block would add noise that a cached stage (which runs frozen
layers once, in inference) never sees. kerastl runs drop path only in the
blocks a stage trains: frozen blocks never drop.

Each drop-path layer keeps the rate it was built with and its depth (its
built rate over the deepest one's); a stage's `drop_path=r` sets the layers
it trains to `r * depth` and `reset_drop_path` puts the built rates back.
"""

from __future__ import annotations

import keras

from kerastl._internals import sublayers

_BUILT_RATE = "_kerastl_built_rate"
_DEPTH = "_kerastl_depth"


def _is_drop_path(layer) -> bool:
    shape = getattr(layer, "noise_shape", None)
    return (
        isinstance(layer, keras.layers.Dropout)
        and shape is not None
        and len(shape) > 2
        and all(size == 1 for size in shape[1:])
    )


def drop_path_layers(model: keras.Model) -> list[tuple[keras.layers.Layer, float]]:
    """The model's drop-path layers with their depth in (0, 1].

    Args:
        model: a `TransferModel` or a backbone.

    Returns:
        `(layer, depth)` pairs in model order: depth is the layer's built rate
        over the largest built rate (EfficientNet builds them linear in depth).

    Example:
        >>> [round(d, 2) for _, d in drop_path_layers(model)][:3]
        [0.12, 0.19, 0.25]
    """
    layers = [layer for layer in sublayers(model) if _is_drop_path(layer)]
    unrecorded = [layer for layer in layers if not hasattr(layer, _DEPTH)]
    if unrecorded:
        deepest = max(float(layer.rate) for layer in unrecorded) or 1.0
        for layer in unrecorded:
            setattr(layer, _BUILT_RATE, float(layer.rate))
            setattr(layer, _DEPTH, float(layer.rate) / deepest)
    return [(layer, getattr(layer, _DEPTH)) for layer in layers]


def switch_off_drop_path(model: keras.Model) -> int:
    """Records the drop-path layout and makes 0 the built rate (off unless a
    stage asks for `drop_path`). For backbones built with the layout of their
    original training but meant to fine-tune without it (kerastl's Lite0).

    Args:
        model: a backbone.

    Returns:
        How many drop-path layers it has.

    Example:
        >>> switch_off_drop_path(backbone)
        13
    """
    layers = drop_path_layers(model)
    for layer, _ in layers:
        setattr(layer, _BUILT_RATE, 0.0)
        layer.rate = 0.0
    return len(layers)


def set_drop_path(model: keras.Model, rate: float | None) -> int:
    """Sets the drop-path rates for a stage: trained blocks on, frozen blocks off.

    Args:
        model: a `TransferModel` whose trainable flags the stage has set.
        rate: the deepest trained block's rate (shallower ones get
            `rate * depth`); None: each trained block at its built rate.

    Returns:
        How many drop-path layers drop (rate > 0) in this stage.

    Raises:
        ValueError: `rate` > 0 but no trained layer of the model has drop
            path (the backbone has none, or the stage trains only the head).

    Example:
        >>> Stage(5, train="block6").prepare(model)  # trainable flags
        >>> set_drop_path(model, 0.2)
        4
    """
    layers = drop_path_layers(model)
    check_drop_path(
        model, [layer for layer, _ in layers if layer.trainable and model.trainable], rate
    )
    active = 0
    for layer, depth in layers:
        on = layer.trainable and model.trainable
        layer.rate = (getattr(layer, _BUILT_RATE) if rate is None else rate * depth) if on else 0.0
        active += layer.rate > 0
    return active


def check_drop_path(model: keras.Model, trained: list, rate: float | None) -> None:
    """Raises if `rate` > 0 but none of the `trained` layers holds a drop-path layer.

    Reads the model only: a stage is checked before any stage runs.

    Args:
        model: a `TransferModel` or a backbone.
        trained: the layers the stage trains (containers are searched).
        rate: the stage's `drop_path`.

    Raises:
        ValueError: nothing in `trained` can drop (the backbone has no
            drop-path layers, or the stage trains only the head).

    Example:
        >>> check_drop_path(model, model.groups["coarse"]["head"], 0.1)
        Traceback (most recent call last):
        ValueError: `drop_path` drops residual blocks that train, but ...
    """
    if not rate:
        return
    layers = {id(layer) for layer, _ in drop_path_layers(model)}
    if any(id(sub) in layers for layer in trained for sub in sublayers(layer)):
        return
    where = (
        "the stage trains none of its blocks"
        if layers
        else "the backbone has no drop-path layers (EfficientNet, EfficientNetV2 and "
        "EfficientNet-Lite0 have them)"
    )
    raise ValueError(
        f"`drop_path` drops residual blocks that train, but {where}. "
        f"Received: drop_path={rate!r} for model {model.name!r}."
    )


def reset_drop_path(model: keras.Model) -> None:
    """Puts every drop-path layer back to its built rate (after a stage).

    Args:
        model: a `TransferModel` or a backbone.

    Example:
        >>> reset_drop_path(model)
    """
    for layer, _ in drop_path_layers(model):
        layer.rate = getattr(layer, _BUILT_RATE)
