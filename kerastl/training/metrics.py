"""`BalancedAccuracy`: mean per-class recall, for imbalanced classification."""

from __future__ import annotations

import keras

from kerastl._validation import check_positive_int


@keras.saving.register_keras_serializable(package="kerastl")
class BalancedAccuracy(keras.metrics.Metric):
    """Mean recall over the classes present in the labels seen so far.

    Labels are integers, or one-hot / soft rows (the class with the most weight).

    On an imbalanced set (elpv: 69% functional) always predicting the majority
    class scores 0.5 here, where plain accuracy gives 0.69. Accumulates a
    confusion matrix, so it is exact over an epoch and sums across replicas.

    Args:
        num_classes: number of classes.
        name: the metric's name in logs.

    Example:
        >>> metric = kerastl.BalancedAccuracy(2)
        >>> metric.update_state([0, 0, 1], [[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
        >>> float(metric.result())
        0.75
    """

    def __init__(self, num_classes: int, name: str = "balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        check_positive_int("num_classes", num_classes)
        self.num_classes = num_classes
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        ops = keras.ops
        if len(y_true.shape) == 2 and y_true.shape[-1] == self.num_classes > 1:
            y_true = ops.argmax(y_true, axis=-1)  # one-hot or mixed (soft) labels
        labels = ops.one_hot(ops.reshape(ops.cast(y_true, "int32"), (-1,)), self.num_classes)
        predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes)
        if sample_weight is not None:
            labels = labels * ops.reshape(ops.cast(sample_weight, labels.dtype), (-1, 1))
        self.confusion.assign_add(ops.cast(ops.matmul(ops.transpose(labels), predicted), "float32"))

    def result(self):
        ops = keras.ops
        support = ops.sum(self.confusion, axis=1)
        recall = ops.diagonal(self.confusion) / ops.maximum(support, 1.0)
        present = ops.cast(support > 0, "float32")
        return ops.sum(recall * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self):
        self.confusion.assign(keras.ops.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
