"""Models rebuilt from their config in the precision asked for."""

from __future__ import annotations

import keras


def rebuilt(config: dict, dtype_policy) -> keras.Model:
    """Deserializes `config` with `dtype_policy` as the global dtype policy.

    A Functional model's config holds each layer's policy, but a KerasHub
    backbone's holds only its constructor arguments, and the layers it builds
    take the global policy: rebuilt under another global policy than the one
    it was built under, such a model computes in another precision (the
    float32 copy of a model trained under `mixed_float16`, merged for export,
    came back computing in float16).

    Args:
        config: `keras.saving.serialize_keras_object(model)`.
        dtype_policy: the policy the copy computes in (a name or a
            `keras.DTypePolicy`, e.g. the source model's `dtype_policy`).

    Returns:
        The deserialized model; the global policy is restored afterwards.

    Example:
        >>> copy = rebuilt(keras.saving.serialize_keras_object(model), model.dtype_policy)
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        return keras.saving.deserialize_keras_object(config)
    finally:
        keras.config.set_dtype_policy(previous)
