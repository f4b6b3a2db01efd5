"""Backbone features computed once, for stages whose lower layers are frozen.

A stage that trains only the head, or only the top groups, spends most of
its time recomputing the frozen layers below. `split_model` cuts a
`TransferModel` where the frozen part ends: an *extractor* (raw inputs →
the tensors crossing the boundary) and a *trainer* (those tensors → logits)
that shares the model's upper layers, so training the trainer trains the
model. `cache_features` runs the extractor once over a dataset and replays
the result batch by batch, in memory up to a bound and on disk beyond it.

Augmentation-aware caching: with `views` (`kerastl.data.views_of`), the
frozen part runs once over each of K fixed views of every training batch (the
8 dihedral symmetries, or K seeded draws of a random policy), and each epoch
serves one view per example, drawn afresh: a probe or a top-group stage gets
augmentation at caching speed.

A `FeatureStore` keeps one cache per cut for a whole run. It recomputes a
cache whose frozen layers changed since (a stage trained them), and, for an
image model, computes a cut's features from a lower cut's cache instead of
from the images (`FeatureCache.derived`): a probe followed by a top-block
stage runs the layers below the block once.

The frozen part always runs in inference mode when cached: BatchNorm
already does so when frozen; Dropout inside frozen layers (Keras applies it
even to frozen layers) is off, as it should be for a fixed feature extractor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile

import keras
import numpy as np

from kerastl._graph import close_upward, crossing_tensors
from kerastl._progress import Progress
from kerastl.backbones.spec import TEXT
from kerastl.data.augment import Views
from kerastl.distribute.keras_fixes import FixedFunctional
from kerastl.groups import LayerGroups
from kerastl.training.inference import traced_inference

HEAD = "head"


class CacheRefused(ValueError):
    """The model cannot be split for caching at the requested group."""


@dataclasses.dataclass
class Split:
    """A model cut at a frozen boundary.

    Args:
        extractor: raw model inputs → the frozen part's outputs (a list).
        trainer: those outputs → the model's logits, sharing the model's layers.
        boundary: where the cut is (`"pooled features"` or a group name).
        note: why the cached path may differ from the uncached one, or "".
        model: the `TransferModel` cut.
        cut: the backbone tensors crossing the cut (None: the pooled features).
        upper: ids of the backbone operations above the cut.
    """

    extractor: keras.Model
    trainer: keras.Model
    boundary: str
    note: str = ""
    model: keras.Model | None = dataclasses.field(default=None, repr=False)
    cut: list | None = dataclasses.field(default=None, repr=False)
    upper: frozenset = dataclasses.field(default=frozenset(), repr=False)

    def is_below(self, other: Split) -> bool:
        """Whether `other`'s cut lies strictly above this one's (its frozen part is larger)."""
        return self.cut is not None and other.upper < self.upper


def bridge(lower: Split, upper: Split) -> keras.Model | None:
    """The frozen layers between two cuts of one image model: `lower`'s frozen
    outputs → `upper`'s.

    Args:
        lower: a cut at a group (`split_model(model, "block6")`).
        upper: a cut above it, or the pooled features (`split_model(model, "head")`).

    Returns:
        A model from `lower.extractor`'s outputs to `upper.extractor`'s, or None
        where there is none to build: `upper` is not above `lower`, or the model
        is a text model or pools tokens (only image feature maps are bridged).

    Example:
        >>> middle = bridge(split_model(model, "block6"), split_model(model, "head"))
        >>> pooled = middle(block6_features)
    """
    model = lower.model
    if model is None or model.modality == TEXT or not lower.is_below(upper):
        return None
    backbone = model.backbone
    if upper.cut is None and len(backbone.output_shape) != 4:
        return None
    span = keras.Model(lower.cut, upper.cut if upper.cut is not None else backbone.output)
    inputs = [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=f"frozen_{i}")
        for i, tensor in enumerate(lower.cut)
    ]
    outputs = span(inputs)
    if upper.cut is None:
        outputs = model.pooling_layer(outputs)
    name = upper.boundary.replace(" ", "_")
    return keras.Model(inputs, keras.tree.flatten(outputs), name=f"{model.name}_to_{name}")


def split_model(model, first_trained: str, granularity: str = "coarse") -> Split:
    """Cuts `model` before the group `first_trained` (or before the head).

    Args:
        model: a `TransferModel`.
        first_trained: `"head"` or the first training group's name.
        granularity: the groups `first_trained` names.

    Returns:
        A `Split`.

    Raises:
        CacheRefused: the cut cannot carry what the upper part needs.

    Example:
        >>> split = split_model(model, "block6")
        >>> split.trainer.fit(FeatureCache(split.extractor, train_ds).dataset(), epochs=3)
    """
    backbone = model.backbone
    trained = _upper_operations(model, first_trained, granularity)
    if id(backbone) in trained:  # an unregistered backbone is one group
        raise CacheRefused(
            f"{first_trained!r} holds the whole backbone: nothing below it is frozen"
        )
    upper = close_upward(backbone, trained)
    upper_backbone = [op for op in backbone.operations if id(op) in upper]
    if first_trained == HEAD or not upper_backbone:
        return _head_split(model)
    cut = crossing_tensors(backbone, upper)
    inputs = keras.tree.flatten(backbone.input)
    if all(any(tensor is given for given in inputs) for tensor in cut):
        raise CacheRefused(f"nothing below {first_trained!r} is frozen")
    mask_at = []
    if model.modality == TEXT:
        mask_at = [i for i, tensor in enumerate(cut) if tensor is backbone.input["padding_mask"]]
        if not mask_at:
            raise CacheRefused(
                f"Cannot cache below {first_trained!r}: the frozen part's outputs do not "
                "carry the padding mask the upper layers and the pooling need."
            )
    lower = keras.Model(backbone.input, cut, name=f"{model.name}_frozen")
    top = keras.Model(cut, backbone.output, name=f"{model.name}_top")
    if model.modality == TEXT:
        frozen = lower({name: model.input[name] for name in backbone.input})
    else:
        frozen = lower(model.preprocessing_layer(model.inputs[0]))
    extractor = keras.Model(model.input, frozen, name=f"{model.name}_extractor")
    cut_inputs = [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=f"frozen_{i}")
        for i, tensor in enumerate(cut)
    ]
    features = top(cut_inputs)
    logits = model.classify(features, cut_inputs[mask_at[0]] if mask_at else None)
    trainer = FixedFunctional(cut_inputs, logits, name=f"{model.name}_from_{first_trained}")
    lower_ops = [op for op in backbone.operations if id(op) not in upper]
    note = _stochastic_note(lower_ops)
    return Split(extractor, trainer, first_trained, note, model, cut, frozenset(upper))


def _head_split(model) -> Split:
    features = model.pooling_layer.output
    extractor = keras.Model(model.input, [features], name=f"{model.name}_extractor")
    cut_input = keras.Input(shape=features.shape[1:], dtype=features.dtype, name="features")
    logits = model.head_layer(model.dropout_layer(cut_input))
    trainer = FixedFunctional([cut_input], logits, name=f"{model.name}_head")
    note = _stochastic_note(model.backbone.layers)
    return Split(extractor, trainer, "pooled features", note, model)


def _upper_operations(model, first_trained: str, granularity: str) -> set[int]:
    groups = LayerGroups.of(model)[granularity]
    names = list(groups)
    if first_trained != HEAD:
        LayerGroups.of(model).check([first_trained], granularity, f"{first_trained!r}")
    start = names.index(first_trained) if first_trained != HEAD else len(names) - 1
    return {
        id(op)
        for name in names[start:]
        for op in groups[name]
        if not isinstance(op, keras.layers.InputLayer)
    }


def _stochastic_note(layers) -> str:
    noisy = [
        layer.name
        for layer in layers
        if isinstance(
            layer,
            keras.layers.Dropout | keras.layers.GaussianNoise | keras.layers.GaussianDropout,
        )
        and getattr(layer, "rate", getattr(layer, "stddev", 0))
    ]
    if not noisy:
        return ""
    return (
        f"the frozen part has {len(noisy)} dropout/noise layers ({', '.join(noisy[:3])}...), "
        "off when cached (a fixed feature extractor) and on in Keras's uncached path"
    )


class FeatureCache:
    """The frozen part's outputs for every batch of a dataset, computed once.

    Kept in memory up to `memory_limit_mb`; beyond it every batch is written
    to `directory` (a temporary folder when None) and read back from there.
    Batch sizes, order and shapes are kept exactly (text batches padded to
    their own length stay so).

    Args:
        extractor: the `Split.extractor`.
        dataset: batches of `(inputs, labels)` or `(inputs, labels, weights)`.
        memory_limit_mb: the in-memory bound.
        directory: where to spill beyond the bound.
        views: fixed views of each input batch (`kerastl.data.views_of`):
            the features of every view are kept, and `dataset` serves one
            view per example; None: the inputs as they are.
        verbose: 0 silent, 1 a progress bar, 2 a line every few seconds, `"auto"`
            one of those two by the output (`kerastl._progress`).

    Example:
        >>> cache = FeatureCache(split.extractor, train_ds)
        >>> split.trainer.fit(cache.dataset(), epochs=5)
    """

    def __init__(
        self,
        extractor: keras.Model,
        dataset,
        *,
        memory_limit_mb: float = 1024,
        directory: str | os.PathLike | None = None,
        views: Views | None = None,
        verbose: int | str = 1,
    ):
        count = views.count if views is not None else 1
        self._prepare(memory_limit_mb, directory, count, stacked=views is not None)
        run = traced_inference(extractor, dataset.element_spec[0])

        def extract(inputs):
            return [np.asarray(array) for array in keras.tree.flatten(run(inputs))]

        def elements():
            for batch in dataset:
                inputs, rest = batch[0], tuple(np.asarray(part) for part in batch[1:])
                if views is None:
                    features = tuple(extract(inputs))
                else:  # [views, batch, ...] per output
                    per_view = [extract(views(inputs, index)) for index in range(views.count)]
                    features = tuple(np.stack(parts) for parts in zip(*per_view, strict=True))
                yield (features, *rest)

        self._fill(elements(), int(dataset.cardinality()), verbose)

    def derived(
        self,
        middle: keras.Model,
        *,
        memory_limit_mb: float = 1024,
        directory: str | os.PathLike | None = None,
        verbose: int | str = 1,
    ) -> FeatureCache:
        """The cache one cut higher: `middle` run over every cached batch (every view).

        Equals a cache extracted from the inputs at the higher cut (the same
        frozen layers run in inference mode on the same values) without
        running the layers below this cache again. Views, batches, order and
        labels are kept.

        Args:
            middle: the frozen layers between the two cuts (`bridge`).
            memory_limit_mb: the new cache's in-memory bound.
            directory: where the new cache spills beyond it.
            verbose: as the constructor.

        Returns:
            A new `FeatureCache`.

        Example:
            >>> pooled = block6_cache.derived(bridge(block6_split, head_split))
        """
        import tensorflow as tf

        cache = FeatureCache.__new__(FeatureCache)
        cache._prepare(memory_limit_mb, directory, self.num_views, stacked=self._views_stacked)
        skip = 2 if self._views_stacked else 1  # [views, batch, ...] or [batch, ...]
        specs = [
            tf.TensorSpec((None, *shape[skip:]), dtype)
            for shape, dtype in self._layout[: self._num_features]
        ]
        run = traced_inference(middle, specs)

        def elements():
            for index in range(self.num_batches):
                features, *rest = self._batch(index)
                if self._views_stacked:
                    views, size = features[0].shape[:2]
                    flat = [part.reshape(views * size, *part.shape[2:]) for part in features]
                    outputs = keras.tree.flatten(run(flat))
                    features = tuple(
                        np.asarray(part).reshape(views, size, *part.shape[1:]) for part in outputs
                    )
                else:
                    outputs = keras.tree.flatten(run(list(features)))
                    features = tuple(np.asarray(part) for part in outputs)
                yield (features, *rest)

        cache._fill(elements(), self.num_batches, verbose)
        return cache

    def _prepare(self, memory_limit_mb: float, directory, num_views: int, stacked: bool) -> None:
        if not memory_limit_mb >= 0:
            raise ValueError(
                f"`memory_limit_mb` must be >= 0. Received: memory_limit_mb={memory_limit_mb!r}."
            )
        self._limit_bytes = memory_limit_mb * 2**20
        self._memory: list = []
        self._files: list[str] = []
        self._directory = directory
        self._temporary = None
        self._layout: list = []
        self._num_features = 0
        self.num_views = num_views
        self._views_stacked = stacked  # features stored as [views, batch, ...]
        self.nbytes = 0

    def _fill(self, elements, total: int, verbose: int | str) -> None:
        progress = Progress("caching features", total, verbose, announce=False)
        for step, element in enumerate(elements):
            self._store(element, self._limit_bytes)
            progress.update(step + 1)
        progress.finish()
        if not self._memory and not self._files:
            raise ValueError("Cannot cache features of an empty dataset.")
        self.in_memory = not self._files

    @property
    def num_batches(self) -> int:
        return len(self._memory) + len(self._files)

    def _store(self, element: tuple, limit_bytes: float) -> None:
        flat = [*element[0], *element[1:]]
        if not self._layout:
            self._num_features = len(element[0])
            batch_axis = [
                1 if self._views_stacked and i < self._num_features else 0 for i in range(len(flat))
            ]
            self._layout = [
                (tuple(None if axis == b else d for axis, d in enumerate(part.shape)), part.dtype)
                for part, b in zip(flat, batch_axis, strict=True)
            ]
        self._layout = [  # a dimension that varies between batches (text length) is None
            (tuple(d if d == n else None for d, n in zip(shape, part.shape, strict=True)), dtype)
            for (shape, dtype), part in zip(self._layout, flat, strict=True)
        ]
        self.nbytes += sum(part.nbytes for part in flat)
        if self._files or self.nbytes > limit_bytes:
            for pending in self._memory:
                self._write(pending)
            self._memory = []
            self._write(flat)
        else:
            self._memory.append(flat)

    def _write(self, flat: list) -> None:
        if self._directory is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="kerastl-features-")
            self._directory = self._temporary.name
        os.makedirs(self._directory, exist_ok=True)
        path = os.path.join(self._directory, f"batch-{len(self._files):06d}.npy")
        with open(path, "wb") as file:
            for part in flat:
                np.save(file, part)
        self._files.append(path)

    def _batch_size(self, index: int) -> int:
        features = self._batch(index)[0]
        return len(features[0][0]) if self.num_views > 1 else len(features[0])

    def _batch(self, index: int) -> tuple:
        if index < len(self._memory):
            flat = self._memory[index]
        else:
            with open(self._files[index - len(self._memory)], "rb") as file:
                flat = [np.load(file) for _ in self._layout]
        return (tuple(flat[: self._num_features]), *flat[self._num_features :])

    def dataset(self, shuffle_seed: int | None = None, view_seed: int = 0, skip_epochs: int = 0):
        """The cached batches as a `tf.data.Dataset`.

        Args:
            shuffle_seed: None: the original order every epoch; an integer: a
                new order of the batches each epoch, from this seed (the
                examples inside a batch stay together).
            view_seed: with views, which view each example gets: every epoch,
                batch after batch (in the order served), the view indices are
                `numpy.random.default_rng(view_seed).integers(num_views,
                size=batch_size)` drawn from one generator kept across epochs.
            skip_epochs: start as the epoch after this many would (their
                order and views drawn and dropped): a resumed stage.

        Returns:
            A dataset of `((features...), labels[, weights])` batches.
        """
        import tensorflow as tf

        rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        view_rng = np.random.default_rng(view_seed)

        def order():
            count = self.num_batches
            return rng.permutation(count) if rng is not None else range(count)

        for _ in range(skip_epochs):
            for index in order():
                if self.num_views > 1:
                    view_rng.integers(self.num_views, size=self._batch_size(int(index)))

        def elements():
            for index in order():
                features, *rest = self._batch(int(index))
                if self.num_views > 1:
                    size = len(features[0][0])
                    chosen = view_rng.integers(self.num_views, size=size)
                    features = tuple(part[chosen, np.arange(size)] for part in features)
                elif self._views_stacked:
                    features = tuple(part[0] for part in features)
                yield (features, *rest)

        specs = [_spec(part) for part in self._layout]
        if self._views_stacked:
            specs[: self._num_features] = [
                tf.TensorSpec(spec.shape[1:], spec.dtype) for spec in specs[: self._num_features]
            ]
        signature = (tuple(specs[: self._num_features]), *specs[self._num_features :])
        dataset = tf.data.Dataset.from_generator(elements, output_signature=signature)
        return dataset.apply(tf.data.experimental.assert_cardinality(self.num_batches)).prefetch(
            tf.data.AUTOTUNE
        )


@dataclasses.dataclass
class _Entry:
    split: Split
    fingerprint: bytes
    train: FeatureCache
    validation: FeatureCache | None


class FeatureStore:
    """The feature caches of one fine-tuning run: one per cut, computed once.

    A `FineTuner` owns one. Stages that cut the model at the same boundary
    share its cache, as long as the frozen layers below the cut hold the
    values they were cached with (a cache whose layers an earlier stage
    trained is computed again); new data (another `fit`) drops the old caches.
    For an image model, a cut's features are computed from a lower cut's
    cache where there is one (or where `source` names one a later stage needs).

    Args:
        memory_limit_mb: each cache's in-memory bound (see `FeatureCache`).
        directory: where caches beyond the bound go, one folder per boundary.
        shuffle_seed: cached training batches in a new seeded order each epoch
            (see `FeatureCache.dataset`); None keeps the stored order.
        views: fixed views of the training batches (`kerastl.data.views_of`),
            one served per example each epoch; validation data is never augmented.
        view_seed: the seed of the view drawn for each example.
        verbose: as `FeatureCache`.

    Example:
        >>> store = FeatureStore()
        >>> train_features, val_features = store.datasets(split_model(model, "head"), train, val)
    """

    def __init__(
        self,
        *,
        memory_limit_mb: float = 1024,
        directory: str | os.PathLike | None = None,
        shuffle_seed: int | None = 0,
        views: Views | None = None,
        view_seed: int = 0,
        verbose: int | str = 1,
    ):
        self.memory_limit_mb = memory_limit_mb
        self.views = views
        self.view_seed = view_seed
        self.directory = os.fspath(directory) if directory is not None else None
        self.shuffle_seed = shuffle_seed
        self.verbose = verbose
        self._caches: dict[str, _Entry] = {}
        self._data: tuple | None = None
        self.passes = None  # a run's `DataPasses`, told of each pass over the training data

    def datasets(
        self,
        split: Split,
        train,
        validation=None,
        *,
        source: Split | None = None,
        skip_epochs: int = 0,
    ):
        """`(training features, validation features or None)` at `split`'s cut.

        Args:
            split: where the model is cut (`split_model`).
            train: the batched training data.
            validation: the batched validation data, or None.
            source: a cut below `split` that a later stage will train from:
                its cache is made now (once) and `split`'s features are
                computed from it (`bridge`) instead of from the inputs.
            skip_epochs: the training features start as after this many
                epochs (`FeatureCache.dataset`).

        Returns:
            Two datasets of cached features (the second None without validation).
        """
        pair = (train, validation)
        if self._data is None or any(a is not b for a, b in zip(self._data, pair, strict=True)):
            self._caches, self._data = {}, pair
        entry = self._fresh(split) or self._derive(split, source) or self._extract(split)
        return (
            entry.train.dataset(self.shuffle_seed, self.view_seed, skip_epochs),
            entry.validation.dataset() if entry.validation else None,
        )

    def _fresh(self, split: Split) -> _Entry | None:
        entry = self._caches.get(split.boundary)
        if entry is None or _unchanged(entry):
            return entry
        if self.verbose:
            print(f"kerastl: caching {split.boundary} again: a stage trained the layers below it.")
        del self._caches[split.boundary]
        return None

    def _derive(self, split: Split, source: Split | None) -> _Entry | None:
        kept = [entry.split for entry in self._caches.values()]
        for lower in [*kept, *([source] if source is not None else [])]:
            middle = bridge(lower, split)
            if middle is None:
                continue
            if lower is source:
                base = self._fresh(lower) or self._extract(lower)
            else:  # a kept cache serves only while current; nobody asked for it again
                kept_entry = self._caches[lower.boundary]
                base = kept_entry if _unchanged(kept_entry) else None
            if base is None:
                continue
            if self.verbose:
                views = f" of {self.views.count} views" if self.views else ""
                print(f"kerastl: caching {split.boundary}{views} from {lower.boundary}'s cache ...")
            return self._keep(
                split,
                *(
                    None if cache is None else cache.derived(middle, **self._where(split, name))
                    for name, cache in (("train", base.train), ("validation", base.validation))
                ),
            )
        return None

    def _extract(self, split: Split) -> _Entry:
        if self.verbose:
            views = f" of {self.views.count} views" if self.views else ""
            print(f"kerastl: caching {split.boundary}{views} (once) ...")
        if self.passes is not None:
            self.passes.before_extract(split.boundary)
        return self._keep(
            split,
            *(
                None
                if data is None
                else FeatureCache(split.extractor, data, views=views, **self._where(split, name))
                for name, data, views in (
                    ("train", self._data[0], self.views),
                    ("validation", self._data[1], None),
                )
            ),
        )

    def _keep(self, split: Split, train: FeatureCache, validation) -> _Entry:
        entry = _Entry(split, _fingerprint(split.extractor), train, validation)
        self._caches[split.boundary] = entry
        return entry

    def _where(self, split: Split, name: str) -> dict:
        slug = "".join(c if c.isalnum() else "_" for c in split.boundary)
        return {
            "memory_limit_mb": self.memory_limit_mb,
            "directory": os.path.join(self.directory, slug, name) if self.directory else None,
            "verbose": self.verbose,
        }


def _unchanged(entry: _Entry) -> bool:
    """Whether the frozen layers below `entry`'s cut still hold the cached values."""
    return entry.fingerprint == _fingerprint(entry.split.extractor)


def _fingerprint(model: keras.Model) -> bytes:
    """A digest of every weight of `model` (trainable or not: BatchNorm statistics too)."""
    digest = hashlib.blake2b(digest_size=16)
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.digest()


def _spec(layout):
    import tensorflow as tf

    shape, dtype = layout
    return tf.TensorSpec(shape, dtype)
