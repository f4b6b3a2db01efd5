"""Mixed precision as an option: float32 by default, float16 or bfloat16 compute."""

from __future__ import annotations

import warnings

import keras

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def set_precision(policy: str = "float32") -> str:
    """Sets the Keras dtype policy for the layers created from now on.

    `mixed_float16` computes in float16 with float32 variables; `compile()`
    then wraps the optimizer (a group optimizer too) in a
    `LossScaleOptimizer`, which `get_strategy()` makes safe across replicas.
    `mixed_bfloat16` needs no loss scaling (TPUs, recent GPUs). A
    `TransferModel` keeps its logits in float32 either way. On a CPU mixed
    precision is slower than float32 (a warning says so), so float32 stays
    the default.

    Args:
        policy: `float32`, `mixed_float16` or `mixed_bfloat16`.

    Returns:
        The policy name now in effect.

    Example:
        >>> kerastl.set_precision("mixed_float16")
        >>> model = kerastl.TransferModel("efficientnet-lite0", num_classes=2)
    """
    if policy not in PRECISIONS:
        raise ValueError(
            f"Unknown precision. Expected one of {PRECISIONS}. Received: policy={policy!r}."
        )
    if policy != "float32" and not _has_accelerator():
        warnings.warn(
            f"{policy!r} on a machine without GPU or TPU: mixed precision is slower than "
            "float32 on CPUs.",
            stacklevel=2,
        )
    keras.mixed_precision.set_global_policy(policy)
    return policy


def _has_accelerator() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))
