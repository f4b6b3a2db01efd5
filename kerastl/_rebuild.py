"""Copies of a model rebuilt from its config: same precision, same tokenizer."""

from __future__ import annotations

import keras


def rebuilt(model: keras.Model, *, config: dict | None = None, dtype_policy=None) -> keras.Model:
    """A new model deserialized from `config`, computing as `model` computes.

    Two things a config does not carry are kept:

    - the precision: a Functional model's config holds each layer's dtype
      policy, but a KerasHub backbone's holds only its constructor arguments,
      and the layers it builds take the global policy. So the config is read
      with `dtype_policy` as the global policy (before: the float32 copy of a
      model trained under `mixed_float16`, merged for export, came back
      computing partly in float16);
    - a text model's tokenizer: its vocabulary is an asset of a `.keras` file,
      not config, so the copy shares `model.preprocessor` (which holds no
      weights) instead of building one from config.

    Args:
        model: the model copied.
        config: what to deserialize (default: `model`'s own, serialized).
        dtype_policy: the policy the copy computes in (default: `model`'s).

    Returns:
        The new model, weights as its initializers left them; the global
        policy is restored afterwards.

    Example:
        >>> copy = rebuilt(model)
        >>> copy.set_weights(model.get_weights())
    """
    if config is None:
        config = keras.saving.serialize_keras_object(model)
    tokenizer = getattr(model, "preprocessor", None)
    if tokenizer is not None:  # built from config it would have no vocabulary
        config = {**config, "config": {**config["config"], "preprocessor": None}}
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy or model.dtype_policy)
    try:
        copy = keras.saving.deserialize_keras_object(config)
    finally:
        keras.config.set_dtype_policy(previous)
    if tokenizer is not None:
        copy.preprocessor = tokenizer  # the last layer tracked, as in `model`
    return copy
