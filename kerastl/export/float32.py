"""A float32 copy of a model trained under a mixed-precision policy.

Exports are float32: a model built under `mixed_float16`/`mixed_bfloat16`
computes in half precision, which TF Serving on CPUs runs slowly (or not at
all) and which tf2onnx cannot convert faithfully. The copy is rebuilt from the
model's config with every mixed policy replaced by float32, then given the
same weights (variables are float32 under mixed precision already).
"""

from __future__ import annotations

import keras

from kerastl._internals import sublayers
from kerastl._rebuild import rebuilt

_MIXED = ("mixed_float16", "mixed_bfloat16")


def is_mixed_precision(model: keras.Model) -> bool:
    """Whether any layer of `model` computes under a mixed-precision policy."""
    layers = sublayers(model)
    return any(layer.dtype_policy.name in _MIXED for layer in layers)


def float32_copy(model: keras.Model) -> keras.Model:
    """Returns `model` itself if it is float32, else a float32 copy with its weights.

    Args:
        model: a Keras model, possibly trained under mixed precision.

    Returns:
        A model whose layers all compute in float32, holding the same weights.

    Example:
        >>> kerastl.set_precision("mixed_float16")
        >>> model = kerastl.TransferModel("efficientnet-lite0", num_classes=2)
        >>> float32_copy(model).layers[-1].compute_dtype
        'float32'
    """
    if not is_mixed_precision(model):
        return model
    config = _to_float32(keras.saving.serialize_keras_object(model))
    copy = rebuilt(model, config=config, dtype_policy="float32")
    copy.set_weights(model.get_weights())
    return copy


def _to_float32(config):
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            name = config.get("config", {}).get("name")
            if name in _MIXED:
                return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _to_float32(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_to_float32(value) for value in config]
    if config in _MIXED:
        return "float32"
    return config
