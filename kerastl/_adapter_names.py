"""Which variables are LoRA adapters: Keras's names for the two low-rank
factors. A leaf module, so freezing and `kerastl.peft` both read it."""

from __future__ import annotations

import keras

ADAPTER_NAMES = frozenset(
    {"lora_kernel_a", "lora_kernel_b", "lora_embeddings_a", "lora_embeddings_b"}
)


def is_adapter(variable: keras.Variable) -> bool:
    """Whether `variable` is one of a LoRA adapter's two factors.

    Example:
        >>> [v.name for v in model.trainable_weights if kerastl.peft.is_adapter(v)][:2]
        ['lora_kernel_a', 'lora_kernel_b']
    """
    return variable.name in ADAPTER_NAMES
