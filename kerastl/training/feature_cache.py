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

The frozen part always runs in inference mode when cached: BatchNorm
already does so when frozen; Dropout inside frozen layers (Keras applies it
even to frozen layers) is off, as it should be for a fixed feature extractor.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import keras
import numpy as np

from kerastl._graph import close_upward, crossing_tensors
from kerastl.backbones.spec import TEXT
from kerastl.data.augment import Views
from kerastl.distribute.keras_fixes import FixedFunctional
from kerastl.groups import LayerGroups

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
    """

    extractor: keras.Model
    trainer: keras.Model
    boundary: str
    note: str = ""


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
    upper = close_upward(backbone, _upper_operations(model, first_trained, granularity))
    upper_backbone = [op for op in backbone.operations if id(op) in upper]
    if first_trained == HEAD or not upper_backbone:
        return _head_split(model)
    cut = crossing_tensors(backbone, upper)
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
    return Split(extractor, trainer, first_trained, _stochastic_note(lower_ops))


def _head_split(model) -> Split:
    features = model.pooling_layer.output
    extractor = keras.Model(model.input, [features], name=f"{model.name}_extractor")
    cut_input = keras.Input(shape=features.shape[1:], dtype=features.dtype, name="features")
    logits = model.head_layer(model.dropout_layer(cut_input))
    trainer = FixedFunctional([cut_input], logits, name=f"{model.name}_head")
    return Split(extractor, trainer, "pooled features", _stochastic_note(model.backbone.layers))


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
        verbose: 0 silent, 2 one line at the end, else a progress bar (as `fit`).

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
        import tensorflow as tf

        if not memory_limit_mb >= 0:
            raise ValueError(
                f"`memory_limit_mb` must be >= 0. Received: memory_limit_mb={memory_limit_mb!r}."
            )
        self._memory: list = []
        self._files: list[str] = []
        self._directory = directory
        self._temporary = None
        self._layout: list = []
        self._num_features = 0
        self.num_views = views.count if views is not None else 1
        self._views_stacked = views is not None
        self.nbytes = 0
        # One trace for every batch: any batch size, and any length where it varies.
        signature = tf.nest.map_structure(
            lambda spec: tf.TensorSpec((None, *spec.shape[1:]), spec.dtype),
            dataset.element_spec[0],
        )
        run = tf.function(lambda x: extractor(x, training=False), input_signature=[signature])
        total = int(dataset.cardinality())
        progress = keras.utils.Progbar(
            total if total > 0 else None, unit_name="batch", verbose=2 if verbose == 2 else 1
        )

        def extract(inputs):
            return [np.asarray(array) for array in keras.tree.flatten(run(inputs))]

        for step, batch in enumerate(dataset):
            inputs, rest = batch[0], tuple(np.asarray(part) for part in batch[1:])
            if views is None:
                features = tuple(extract(inputs))
            else:  # [views, batch, ...] per output
                per_view = [extract(views(inputs, index)) for index in range(views.count)]
                features = tuple(np.stack(parts) for parts in zip(*per_view, strict=True))
            self._store((features, *rest), memory_limit_mb * 2**20)
            if verbose:
                progress.update(step + 1)
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

    def _batch(self, index: int) -> tuple:
        if index < len(self._memory):
            flat = self._memory[index]
        else:
            with open(self._files[index - len(self._memory)], "rb") as file:
                flat = [np.load(file) for _ in self._layout]
        return (tuple(flat[: self._num_features]), *flat[self._num_features :])

    def dataset(self, shuffle_seed: int | None = None, view_seed: int = 0):
        """The cached batches as a `tf.data.Dataset`.

        Args:
            shuffle_seed: None: the original order every epoch; an integer: a
                new order of the batches each epoch, from this seed (the
                examples inside a batch stay together).
            view_seed: with views, which view each example gets: every epoch,
                batch after batch (in the order served), the view indices are
                `numpy.random.default_rng(view_seed).integers(num_views,
                size=batch_size)` drawn from one generator kept across epochs.

        Returns:
            A dataset of `((features...), labels[, weights])` batches.
        """
        import tensorflow as tf

        rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        view_rng = np.random.default_rng(view_seed)

        def elements():
            count = self.num_batches
            for index in rng.permutation(count) if rng is not None else range(count):
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


class FeatureStore:
    """The feature caches of one fine-tuning run: one per cut, computed once.

    A `FineTuner` owns one. Stages that cut the model at the same boundary
    share its cache; new data (another `fit`) drops the old caches.

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
        self._caches: dict[str, list] = {}
        self._data: tuple | None = None

    def datasets(self, split: Split, train, validation=None) -> tuple:
        """`(training features, validation features or None)` at `split`'s cut.

        Args:
            split: where the model is cut (`split_model`).
            train: the batched training data.
            validation: the batched validation data, or None.

        Returns:
            Two datasets of cached features (the second None without validation).
        """
        pair = (train, validation)
        if self._data is None or any(a is not b for a, b in zip(self._data, pair, strict=True)):
            self._caches, self._data = {}, pair
        if split.boundary not in self._caches:
            if self.verbose:
                views = f" of {self.views.count} views" if self.views else ""
                print(f"kerastl: caching {split.boundary}{views} (once) ...")
            self._caches[split.boundary] = [
                None if data is None else self._cache(split, data, name, views)
                for name, data, views in (
                    ("train", train, self.views),
                    ("validation", validation, None),
                )
            ]
        train_cache, validation_cache = self._caches[split.boundary]
        return (
            train_cache.dataset(self.shuffle_seed, self.view_seed),
            validation_cache.dataset() if validation_cache else None,
        )

    def _cache(self, split: Split, data, name: str, views: Views | None) -> FeatureCache:
        slug = "".join(c if c.isalnum() else "_" for c in split.boundary)
        return FeatureCache(
            split.extractor,
            data,
            memory_limit_mb=self.memory_limit_mb,
            directory=os.path.join(self.directory, slug, name) if self.directory else None,
            views=views,
            verbose=self.verbose,
        )


def _spec(layout):
    import tensorflow as tf

    shape, dtype = layout
    return tf.TensorSpec(shape, dtype)
