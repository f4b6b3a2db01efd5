"""Stratified, seeded subsets of a dataset: `data.limit` and held-out splits.

A dataset read in class order (an image folder, a sorted table) cut with
`take(n)` holds only its first classes; here each class keeps its share.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kerastl._validation import check_positive_int


def stratified_sample(labels: Sequence[int], count: int, seed: int = 0) -> np.ndarray:
    """Indices of `count` examples drawn after a seeded shuffle, each class keeping its share.

    Shares are rounded by largest remainder, and every class keeps at least one
    example while `count` allows it.

    Args:
        labels: the label of every example.
        count: how many to keep (all of them if `count >= len(labels)`).
        seed: the shuffle seed.

    Returns:
        The chosen indices, sorted.

    Example:
        >>> stratified_sample([0, 0, 0, 1, 1, 1], 2)
        array([2, 5])
    """
    check_positive_int("count", count)
    labels = np.asarray(labels)
    if count >= len(labels):
        return np.arange(len(labels))
    classes, sizes = np.unique(labels, return_counts=True)
    exact = sizes * count / len(labels)
    quota = np.floor(exact).astype(int)
    if count >= len(classes):
        quota = np.maximum(quota, 1)
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    for index in order:
        if quota.sum() >= count:
            break
        if quota[index] < sizes[index]:
            quota[index] += 1
    while quota.sum() > count:  # the minimum of one per class overshot
        quota[np.argmax(quota)] -= 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[:share]
        for label, share in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def labels_of(dataset) -> np.ndarray:
    """The integer labels of an unbatched `(inputs, label)` dataset, in order
    (all 0 for a dataset of unlabelled elements).

    The label map is fused with the maps before it, so tf.data drops the work
    on the inputs that nothing reads: reading the labels of decoded and
    resized images does not decode or resize them (0.15 s against 1 s on
    elpv's 1968 training images at 64 px; bench/README.md, "Test suite").
    Maps fuse when they run sequentially or with `num_parallel_calls=AUTOTUNE`
    (as TFDS's and kerastl's do); stateful ops and a `cache()` still run.

    Raises:
        ValueError: the labels are not one integer per example (one-hot or
            multi-label targets).
    """
    import tensorflow as tf

    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) >= 2):
        return np.zeros(int(dataset.reduce(0, lambda total, _: total + 1)), np.int64)
    options = tf.data.Options()
    options.experimental_optimization.map_fusion = True
    labels = dataset.map(
        lambda x, y, *rest: y, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).with_options(options)
    # In batches: one Python step per element cost 1.2 s on elpv's 1968 labels.
    batches = [np.asarray(b) for b in labels.batch(8192).as_numpy_iterator()]
    if not batches:
        return np.zeros(0, np.int64)
    values = np.concatenate(batches)
    if values.ndim > 1 and int(np.prod(values.shape[1:])) == 1:  # labels of shape (1,)
        values = values.reshape(-1)
    if values.ndim != 1:
        raise ValueError(
            f"labels_of reads one integer label per example; got labels of shape "
            f"{values.shape[1:]} (one-hot or multi-label targets have no class to stratify by)"
        )
    return values.astype(np.int64)


def select(dataset, indices: Sequence[int], *, keep: bool = True):
    """The examples at `indices` (or, with `keep=False`, all the others), in order.

    Args:
        dataset: an unbatched dataset.
        indices: positions in `dataset`.
        keep: keep the listed examples, or drop them.

    Returns:
        The filtered dataset; its size is known to tf.data where the
        dataset's is (positions past the end are not counted).

    Raises:
        ValueError: a negative position.

    Example:
        >>> validation = select(raw, held_out)
    """
    import tensorflow as tf

    indices = np.asarray(indices, np.int64)
    if not len(indices):
        return dataset.take(0) if keep else dataset
    if indices.min() < 0:
        raise ValueError(
            f"`indices` are positions from 0. Received: {int(indices.min())} among them"
        )
    mask = np.zeros(int(indices.max()) + 1, bool)
    mask[indices] = True
    last = len(mask) - 1

    def wanted(position, _):
        hit = tf.logical_and(position <= last, tf.gather(mask, tf.minimum(position, last)))
        return hit if keep else tf.logical_not(hit)

    chosen = dataset.enumerate().filter(wanted).map(lambda _, example: example)
    size = int(dataset.cardinality())
    if size < 0:  # unknown or infinite: tf.data counts when asked
        return chosen
    inside = int(np.count_nonzero(mask[:size]))
    # A filter hides the size from tf.data; this one is known, and counting it
    # would read (and decode) every example again.
    return chosen.apply(tf.data.experimental.assert_cardinality(inside if keep else size - inside))


def take_stratified(dataset, count: int, seed: int = 0):
    """`count` examples of an unbatched `(inputs, label)` dataset, stratified and seeded.

    Args:
        dataset: unbatched `(inputs, integer label)` pairs (unlabelled
            elements: a plain seeded sample).
        count: how many to keep.
        seed: the shuffle seed.

    Returns:
        The subset, in the dataset's order.

    Example:
        >>> quick = take_stratified(raw, 256)  # every class, in proportion
    """
    labels = labels_of(dataset)
    return select(dataset, stratified_sample(labels, count, seed))


def balanced_class_weights(dataset, num_classes: int) -> dict[int, float]:
    """Inverse-frequency class weights over a labelled dataset (`"balanced"` in
    scikit-learn): `total / (classes present * count)`; absent classes get 0.

    Args:
        dataset: batches of `(inputs, integer labels, ...)`.
        num_classes: the number of classes.

    Returns:
        `{class index: weight}`, as Keras's `fit(class_weight=...)` takes.

    Example:
        >>> balanced_class_weights(train_ds, 2)
        {0: 0.72, 1: 1.63}
    """
    counts = np.zeros(num_classes, np.int64)
    for batch in dataset:
        np.add.at(counts, np.asarray(batch[1]).reshape(-1), 1)
    present = counts > 0
    weights = np.where(present, counts.sum() / (present.sum() * np.maximum(counts, 1)), 0.0)
    return {index: float(weight) for index, weight in enumerate(weights)}
