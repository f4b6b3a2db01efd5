"""Input pipelines: images or token batches ready for a `TransferModel`.

Order of the steps: per-example preparation (parallel decode/resize or
tokenization) → `cache` → `shuffle` (seeded, reshuffled each epoch) →
batch → `prefetch`. Augmentation is not a pipeline step here: it is a Keras
layer (`kerastl.data.augment`) given to `FineTuner(augmentation=...)`, applied
to training batches only and never part of the model, so never exported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kerastl._validation import check_positive_int
from kerastl.data.sampling import take_stratified


def from_arrays(x, y, *, num_classes: int | None = None):
    """A NumPy source: `(x[i], y[i])` pairs, checked up front.

    Args:
        x: an array of inputs (e.g. `[N, H, W, C]` pixels in [0, 255]).
        y: integer labels, `[N]`.
        num_classes: if given, every label must be in `[0, num_classes)`.

    Returns:
        An unbatched `tf.data.Dataset`.

    Example:
        >>> data = np.load("digits.npz")
        >>> ds = kerastl.data.from_arrays(data["x"], data["y"], num_classes=10)
    """
    import tensorflow as tf

    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(
            f"`x` and `y` differ in length. Received: {len(x)} inputs, {len(y)} labels."
        )
    if len(x) == 0:
        raise ValueError("`x` is empty. Received: 0 examples.")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`y` must hold integer labels. Received: dtype {y.dtype}.")
    if num_classes is not None:
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if len(bad):
            raise ValueError(
                f"Labels must be in [0, {num_classes}). Received: y[{bad[0]}]={y[bad[0]]} "
                f"({len(bad)} out of range)."
            )
    return tf.data.Dataset.from_tensor_slices((x, y.astype("int32")))


def resized_rgb(image, image_size: Sequence[int], *, antialias: bool = True):
    """Pixels of any size as the model takes them: the one resize of a run's images.

    Grey is tiled to RGB, alpha dropped, and the image resized with bilinear
    interpolation and antialiasing. Training (image folders, TFDS, arrays),
    the exported `image_bytes` and `tf_example` signatures and `kerastl
    explain` all resize through this function, so a served image reaches the
    model as a training image did.

    Args:
        image: `[H, W, C]` pixels (any dtype), 1, 3 or 4 channels.
        image_size: `(height, width)`.
        antialias: False resizes as `tf.image.resize` and
            `keras.utils.image_dataset_from_directory` do by default (for
            serving a model trained on data read that way).

    Returns:
        float32 `[height, width, 3]` RGB in the input's value range.

    Example:
        >>> resized_rgb(tf.io.decode_image(tf.io.read_file("cat.png")), (224, 224)).shape
        TensorShape([224, 224, 3])
    """
    import tensorflow as tf

    height, width = (int(v) for v in image_size)
    image = tf.cast(image, tf.float32)
    image = tf.cond(
        tf.shape(image)[-1] == 1,
        lambda: tf.tile(image, [1, 1, 3]),
        lambda: image[..., :3],
    )
    image = tf.image.resize(image, (height, width), antialias=antialias)
    return tf.ensure_shape(image, (height, width, 3))


def prepare_images(dataset, image_size: Sequence[int]):
    """Resizes (bilinear, antialiased) and converts images to float32 RGB in [0, 255].

    Grey and RGBA inputs become RGB, so a greyscale dataset (elpv) feeds an
    ImageNet backbone. Runs in parallel over examples (`resized_rgb`).

    Args:
        dataset: unbatched `(image, label)` pairs, any size, 1, 3 or 4 channels.
        image_size: `(height, width)`.

    Returns:
        The dataset of `(float32 [H, W, 3], label)`.

    Example:
        >>> train = prepare_images(tfds.load("elpv", split="train", as_supervised=True), (128, 128))
    """
    import tensorflow as tf

    height, width = (int(v) for v in image_size)
    check_positive_int("image height", height)
    check_positive_int("image width", width)
    return dataset.map(
        lambda image, label: (resized_rgb(image, (height, width)), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def batched(
    dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    cache: bool = True,
    limit: int | None = None,
):
    """cache → shuffle (seeded, a new order each epoch) → batch → prefetch.

    Args:
        dataset: unbatched examples.
        batch_size: examples per batch (the last batch may be smaller).
        shuffle: shuffle the whole dataset each epoch (training data).
        seed: the shuffle seed: the same seed gives the same epochs.
        cache: keep prepared examples in memory after the first epoch.
        limit: use only `limit` examples (quick runs), each class keeping its
            share, drawn after a shuffle with `seed`.

    Returns:
        A batched, prefetched dataset with a known length.

    Example:
        >>> train = batched(prepare_images(raw, (128, 128)), 32, shuffle=True, seed=0)
    """
    import tensorflow as tf

    check_positive_int("batch_size", batch_size)
    if limit is not None:
        check_positive_int("limit", limit)
        dataset = take_stratified(dataset, limit, seed)
    if cache:
        dataset = dataset.cache()
    size = _count(dataset)
    if shuffle:
        dataset = dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True)
    batches = dataset.batch(batch_size)
    if int(batches.cardinality()) < 0:  # after a filter: known to us, not to tf.data
        batches = batches.apply(tf.data.experimental.assert_cardinality(-(-size // batch_size)))
    return batches.prefetch(tf.data.AUTOTUNE)


def text_batches(
    dataset,
    preprocessor,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    bucket: bool = True,
    limit: int | None = None,
):
    """Tokenized, length-bucketed, dynamically padded batches of `(text, label)`.

    Reviews average ~27 tokens, so padding every batch to a fixed 64 or 128
    wastes most of the compute. Here examples of similar length are batched
    together (`bucket_by_sequence_length`) and each batch is cut to its
    longest example, as the Hugging Face Trainer does with `group_by_length`.

    Args:
        dataset: unbatched `(string, label)` pairs.
        preprocessor: a KerasHub text preprocessor (`create_text_preprocessor`):
            its `sequence_length` is the maximum length.
        batch_size: examples per batch.
        shuffle: shuffle each epoch (seeded).
        seed: the shuffle seed.
        bucket: batch by length; False: in order, still cut to the longest.
        limit: use only `limit` examples, stratified and seeded as in `batched`.

    Returns:
        A dataset of `({"token_ids", "padding_mask", "segment_ids"?}, label)`
        batches with a known length.

    Example:
        >>> pre = kerastl.create_text_preprocessor("all-minilm-l6-v2", sequence_length=64)
        >>> train = text_batches(raw_train, pre, 32, shuffle=True)
    """
    import tensorflow as tf

    check_positive_int("batch_size", batch_size)
    if limit is not None:
        check_positive_int("limit", limit)
        dataset = take_stratified(dataset, limit, seed)
    tokens = (
        dataset.batch(256)
        .map(lambda text, label: (preprocessor(text), label), num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
        .cache()
    )
    lengths = np.array([int(np.sum(x["padding_mask"])) for x, _ in tokens.as_numpy_iterator()])
    if len(lengths) == 0:
        raise ValueError("The text dataset is empty.")
    if shuffle:
        tokens = tokens.shuffle(len(lengths), seed=seed, reshuffle_each_iteration=True)
    if bucket:
        longest = int(preprocessor.sequence_length)
        boundaries = [b for b in (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384) if b < longest]
        batches = tokens.bucket_by_sequence_length(
            lambda x, _: tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32)),
            bucket_boundaries=[b + 1 for b in boundaries],
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        )
        edges = np.digitize(lengths, [b + 1 for b in boundaries])
        count = sum(-(-n // batch_size) for n in np.bincount(edges) if n)
    else:
        batches = tokens.batch(batch_size)
        count = -(-len(lengths) // batch_size)

    def trim(inputs, label):
        length = tf.reduce_max(tf.reduce_sum(tf.cast(inputs["padding_mask"], tf.int32), axis=1))
        return {key: value[:, :length] for key, value in inputs.items()}, label

    batches = batches.map(trim, num_parallel_calls=tf.data.AUTOTUNE)
    return batches.apply(tf.data.experimental.assert_cardinality(count)).prefetch(tf.data.AUTOTUNE)


def _count(dataset) -> int:
    count = int(dataset.cardinality())
    if count >= 0:
        return count
    return int(dataset.reduce(0, lambda total, _: total + 1))
