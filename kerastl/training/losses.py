"""Losses Keras lacks for transfer learning."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="kerastl")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy on integer labels with label smoothing.

    Keras's `SparseCategoricalCrossentropy` has no `label_smoothing`; this is
    `CategoricalCrossentropy(label_smoothing=...)` on one-hot integer labels.

    Args:
        label_smoothing: in [0, 1): mass spread uniformly over all classes.
        from_logits: whether predictions are logits.

    Example:
        >>> model.compile("adam", kerastl.SparseSmoothedCrossentropy(0.1, from_logits=True))
    """

    def __init__(self, label_smoothing: float = 0.1, from_logits: bool = True, **kwargs):
        if not 0 <= label_smoothing < 1:
            raise ValueError(
                f"`label_smoothing` must be in [0, 1). Received: label_smoothing={label_smoothing}."
            )
        super().__init__(name=kwargs.pop("name", "sparse_smoothed_crossentropy"), **kwargs)
        self.label_smoothing = label_smoothing
        self.from_logits = from_logits

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.one_hot(
            keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,)), classes
        )
        return keras.losses.categorical_crossentropy(
            labels, y_pred, from_logits=self.from_logits, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {
            **super().get_config(),
            "label_smoothing": self.label_smoothing,
            "from_logits": self.from_logits,
        }
