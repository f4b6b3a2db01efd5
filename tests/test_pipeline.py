"""Input pipelines: NumPy source, image preparation, batching, text length bucketing."""

import numpy as np
import pytest
import tensorflow as tf

from kerastl.data.pipeline import (
    batched,
    from_arrays,
    prepare_images,
    text_batches,
)
from kerastl.data.sampling import labels_of, select


def test_from_arrays_checks_lengths_types_and_label_range():
    x = np.zeros((4, 2, 2, 3), "float32")
    assert len(list(from_arrays(x, np.array([0, 1, 2, 1]), num_classes=3))) == 4
    with pytest.raises(ValueError, match="Received: 4 inputs, 3 labels"):
        from_arrays(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"Received: y\[2\]=5 \(1 out of range\)"):
        from_arrays(x, np.array([0, 1, 5, 1]), num_classes=3)
    with pytest.raises(ValueError, match=r"integer labels\. Received: dtype float64"):
        from_arrays(x, np.array([0.0, 1.0, 1.0, 0.0]))


def test_prepare_images_makes_rgb_float_of_the_asked_size():
    grey = np.full((2, 10, 12, 1), 200, "uint8")
    rgba = np.full((2, 10, 12, 4), 100, "uint8")
    for images, value in ((grey, 200.0), (rgba, 100.0)):
        data = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1])))
        image, _ = next(iter(prepare_images(data, (8, 8))))
        assert image.shape == (8, 8, 3) and image.dtype == tf.float32
        np.testing.assert_allclose(image, value, atol=1e-3)


def test_labels_are_read_in_order_without_running_the_maps_on_the_inputs():
    """`labels_of` (the pass behind `data.limit` and the held-out split) fuses its
    label map with the maps before it: bytes that are no PNG are never decoded
    (unfused, the pass raises on the first), and the labels keep their order
    through parallel maps."""
    labels = np.random.default_rng(0).integers(0, 5, 300)
    data = tf.data.Dataset.from_tensor_slices((np.full(300, b"not a png"), labels))
    decode = lambda png, y: (tf.io.decode_png(png), y)  # noqa: E731
    decoded = data.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    prepared = prepare_images(decoded, (224, 224))
    np.testing.assert_array_equal(labels_of(prepared), labels)
    with pytest.raises(tf.errors.InvalidArgumentError, match="PNG"):
        next(iter(prepared))
    column = tf.data.Dataset.from_tensor_slices((np.zeros((3, 2)), np.array([[2], [0], [1]])))
    np.testing.assert_array_equal(labels_of(column), [2, 0, 1])  # one label of shape (1,) each
    one_hot = tf.data.Dataset.from_tensor_slices((np.zeros((3, 2)), np.eye(3)))
    with pytest.raises(ValueError, match=r"got labels of shape \(3,\)"):
        labels_of(one_hot)


def test_a_selection_knows_its_size_without_reading_the_examples():
    """`select` (the held-out split, `data.limit`) tells tf.data how many examples it
    keeps, so batching never counts them by decoding every image again; the size
    told is the one iterating gives (assert_cardinality would raise otherwise)."""
    data = tf.data.Dataset.range(10).map(lambda i: (i, i % 2))
    held_out = [1, 4, 9, 12]  # 12 lies past the end: not counted
    for keep, expected in ((True, [1, 4, 9]), (False, [0, 2, 3, 5, 6, 7, 8])):
        chosen = select(data, held_out, keep=keep)
        assert int(chosen.cardinality()) == len(expected)
        assert [int(x) for x, _ in chosen] == expected
    unknown = data.filter(lambda x, y: x < 5)
    assert int(select(unknown, [0, 1]).cardinality()) == tf.data.UNKNOWN_CARDINALITY
    with pytest.raises(ValueError, match=r"positions from 0\. Received: -1"):
        select(data, [3, -1])


def test_batched_shuffles_reproducibly_and_differently_each_epoch():
    data = tf.data.Dataset.range(20)
    epochs = lambda seed: [  # noqa: E731
        [int(v) for batch in ds for v in batch]
        for ds in [batched(data, 8, shuffle=True, seed=seed)] * 2
    ]
    first, second = epochs(0)
    assert sorted(first) == list(range(20)) and first != second
    assert epochs(0) == [first, second]
    assert int(batched(data, 8, limit=10).cardinality()) == 2


class _Preprocessor:
    """Stands in for a KerasHub text preprocessor: one token per word, padded."""

    sequence_length = 12

    def __call__(self, text):
        words = tf.strings.split(text)
        ids = tf.strings.to_hash_bucket_fast(words, 50) + 1
        ids = ids[:, : self.sequence_length].to_tensor(shape=(None, self.sequence_length))
        mask = tf.cast(ids > 0, tf.int32)
        return {"token_ids": tf.cast(ids, tf.int32), "padding_mask": mask}


def test_text_batches_group_by_length_and_cut_each_batch_to_its_longest():
    texts = [" ".join(["w"] * n) for n in (2, 11, 3, 10, 2, 9, 3, 12)]
    data = tf.data.Dataset.from_tensor_slices((texts, np.arange(8) % 2))
    batches = text_batches(data, _Preprocessor(), 2, bucket=True)
    lengths = []
    for inputs, _ in batches:
        width = inputs["token_ids"].shape[1]
        assert int(tf.reduce_max(tf.reduce_sum(inputs["padding_mask"], 1))) == width
        lengths.append(width)
    assert len(lengths) == int(batches.cardinality()) == 4
    assert sorted(lengths) == [3, 3, 11, 12]  # short with short, long with long
    unbucketed = [
        x["token_ids"].shape[1] for x, _ in text_batches(data, _Preprocessor(), 2, bucket=False)
    ]
    assert unbucketed == [11, 10, 9, 12]
