"""`check_fit_data`: what `FineTuner.fit` trains and validates on, checked first."""

from __future__ import annotations

import keras


def check_fit_data(dataset, what: str, model: keras.Model) -> None:
    """Raises unless `dataset` is a `tf.data.Dataset` of batches `model` takes.

    Without this, NumPy arrays failed with "'tuple' object has no attribute
    'cardinality'", and an unbatched dataset with Keras's shape error from
    deep inside a feature cache.

    Args:
        dataset: the data (None passes: no validation).
        what: its name in the message (`train`, `validation`).
        model: the model it is for.

    Raises:
        TypeError: not a `tf.data.Dataset`.
        ValueError: its inputs have one dimension fewer than the model's
            batches (examples not batched), or its labels are one-hot (or
            otherwise more than one number per example), where FineTuner
            trains on integer class indices.

    Example:
        >>> check_fit_data(train_ds, "train", model)
    """
    import tensorflow as tf

    if dataset is None:
        return
    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"`{what}` must be a batched tf.data.Dataset of (inputs, labels), e.g. "
            "`tf.data.Dataset.from_tensor_slices((x, y)).batch(32)`. "
            f"Received: {type(dataset).__name__}."
        )
    spec = dataset.element_spec
    inputs = spec[0] if isinstance(spec, tuple) else spec
    first = tf.nest.flatten(inputs)[0]
    labels = tf.nest.flatten(spec[1])[0] if isinstance(spec, tuple) and len(spec) > 1 else None
    if labels is not None and labels.shape.rank == 2 and labels.shape[-1] not in (1, None):
        raise ValueError(
            f"`{what}` yields labels of shape {tuple(labels.shape)} (one-hot?), where FineTuner "
            "trains on integer class indices of shape (batch,): map them, e.g. "
            f"`{what}.map(lambda x, y: (x, tf.argmax(y, axis=-1)))`, or read the images with "
            "`keras.utils.image_dataset_from_directory(..., label_mode='int')`."
        )
    if first.shape.rank is None:
        return
    # Raw strings are tokenized into the model's `[batch, tokens]` inputs.
    expected = 1 if first.dtype == tf.string else len(tf.nest.flatten(model.inputs)[0].shape)
    if first.shape.rank == expected - 1:
        raise ValueError(
            f"`{what}` yields single examples (inputs of shape {tuple(first.shape)}), where "
            f"the model takes batches: batch it, e.g. `{what}.batch(32)`."
        )
