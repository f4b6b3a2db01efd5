"""`FineTuner`: train a `TransferModel` in stages, head first, then upper groups.

Each `Stage` says what trains (`"head"`, `"all"`, or a group and every
group after it), for how many epochs, with which optimizer and learning
rates (one rate, or a discriminative spread with `lr_mult`), and with which
regularization (weight decay, label smoothing, early stopping). Changing
what trains goes through `set_trainable_groups`'s rules (BatchNorm stays
frozen unless `train_bn`) and recompiles with a fresh optimizer.

Feature caching: a stage that trains only the head runs the frozen backbone
once over the data, keeps the pooled features, and trains the head layers on
them (30-70x faster per epoch); later stages continue end to end. The head
layers are shared, so the full model holds the trained head afterwards. Do
not cache when the input pipeline augments (`cache_features=False`): cached
features would freeze one augmentation.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from kerastl._validation import check_positive_int
from kerastl.freezing import freeze, freeze_to, unfreeze
from kerastl.losses import SparseSmoothedCrossentropy
from kerastl.optimizers import discriminative_optimizer

HEAD, ALL = "head", "all"
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of fine-tuning.

    Args:
        epochs: epochs in this stage.
        train: `"head"`, `"all"`, or a coarse group name: that group and every
            group after it train (`freeze_to`).
        lr: the head's learning rate.
        lr_mult: spread rates over the training groups, the first at
            `lr / lr_mult` (fastai `slice`); None: one rate for all.
        optimizer: `adam`, `adamw` or `sgd` (momentum 0.9).
        weight_decay: decoupled weight decay (biases and norms exempt).
        label_smoothing: in [0, 1).
        patience: stop after this many epochs without a better validation
            loss and restore the best weights (needs validation data).
        train_bn: let BatchNormalization layers in training groups update.

    Example:
        >>> kerastl.Stage(epochs=5, train="block6", lr=1e-4, lr_mult=10, patience=2)
    """

    epochs: int
    train: str = HEAD
    lr: float = 1e-3
    lr_mult: float | None = None
    optimizer: str = "adam"
    weight_decay: float | None = None
    label_smoothing: float = 0.0
    patience: int | None = None
    train_bn: bool = False

    def __post_init__(self):
        check_positive_int("epochs", self.epochs)
        if not self.lr > 0:
            raise ValueError(f"`lr` must be positive. Received: lr={self.lr!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"`optimizer` must be one of {OPTIMIZERS}. Received: optimizer={self.optimizer!r}."
            )
        if self.lr_mult is not None and self.lr_mult < 1:
            raise ValueError(f"`lr_mult` must be >= 1. Received: lr_mult={self.lr_mult!r}.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"`patience` must be >= 1. Received: patience={self.patience!r}.")


class FineTuner:
    """Runs `Stage`s on a `TransferModel`, caching backbone features for head stages.

    Args:
        model: a classification `TransferModel` (built inside `strategy.scope()`).
        strategy: the tf.distribute strategy (default: the model's).
        cache_features: train head-only stages on cached pooled features.
        metrics: Keras metrics to track.
        verbose: passed to `fit`.

    Example:
        >>> tuner = kerastl.FineTuner(model)
        >>> history = tuner.fit(train_ds, val_ds, stages=[kerastl.Stage(3),
        ...                     kerastl.Stage(5, train="block6", lr=1e-4, lr_mult=10)])
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        strategy=None,
        cache_features: bool = True,
        metrics: tuple = ("accuracy",),
        verbose: str | int = "auto",
    ):
        if not hasattr(model, "head_layer"):
            raise TypeError(f"FineTuner needs a kerastl.TransferModel. Received: model={model!r}.")
        self.model = model
        self.strategy = strategy or model.distribute_strategy
        self.cache_features = cache_features
        self.metrics = tuple(metrics)
        self.verbose = verbose
        self.stage_starts: list[int] = []
        self._cached = None

    def fit(self, train, validation=None, *, stages) -> keras.callbacks.History:
        """Trains stage after stage; epochs are numbered across stages.

        Args:
            train: a batched `tf.data.Dataset` of `(inputs, integer labels)`,
                in a fixed order per epoch if features are cached.
            validation: the same for validation, or None.
            stages: the `Stage`s, in order.

        Returns:
            A `History` over all stages; `stage_starts` holds each stage's first epoch.
        """
        stages = list(stages)
        if not stages or not all(isinstance(stage, Stage) for stage in stages):
            raise ValueError(
                f"`stages` must be a non-empty list of Stage. Received: stages={stages!r}."
            )
        if any(stage.patience for stage in stages) and validation is None:
            raise ValueError(
                "Early stopping (`patience`) needs validation data. Received: validation=None."
            )
        history = keras.callbacks.History()
        history.history, history.epoch = {}, []
        epoch = 0
        for stage in stages:
            self.stage_starts.append(epoch)
            result = self._run(stage, train, validation, epoch)
            for key, values in result.history.items():
                history.history.setdefault(key, []).extend(values)
            history.epoch.extend(range(epoch, epoch + len(result.epoch)))
            epoch += len(result.epoch)
        history.stage_starts = list(self.stage_starts)
        return history

    def _run(self, stage: Stage, train, validation, first_epoch: int):
        model = self.model
        callbacks = []
        if stage.patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(patience=stage.patience, restore_best_weights=True)
            )
        with self.strategy.scope():
            _set_what_trains(model, stage)
            model.compile(_optimizer(model, stage), _loss(stage), metrics=list(self.metrics))
            cached = stage.train == HEAD and self.cache_features
            target = model
            if cached:
                target = self._head_model()
                target.compile(_optimizer(model, stage), _loss(stage), metrics=list(self.metrics))
        if cached:
            train, validation = self._features(train, validation)
        return target.fit(
            train,
            validation_data=validation,
            initial_epoch=first_epoch,
            epochs=first_epoch + stage.epochs,
            callbacks=callbacks,
            verbose=self.verbose,
        )

    def _head_model(self) -> keras.Model:
        """The trainable head (dropout, dense) on pooled features, sharing its layers."""
        model = self.model
        features = keras.Input(shape=model.pooling_layer.output.shape[1:], name="features")
        outputs = model.head_layer(model.dropout_layer(features))
        return keras.Model(features, outputs, name=f"{model.name}_head")

    def _features(self, train, validation):
        """Pooled backbone features of both datasets, computed once and batched as before."""
        if self._cached is None:
            extractor = keras.Model(self.model.inputs, self.model.pooling_layer.output)
            self._cached = tuple(
                _extract(extractor, data) if data is not None else None
                for data in (train, validation)
            )
        return self._cached


def fine_tune(
    model: keras.Model,
    train,
    validation=None,
    *,
    epochs: int,
    freeze_epochs: int = 1,
    base_lr: float = 2e-3,
    lr_mult: float = 100.0,
    **stage_options,
) -> keras.callbacks.History:
    """fastai's `fine_tune`: the head alone, then everything with discriminative rates.

    Stage 1 trains the head for `freeze_epochs` at `base_lr`; stage 2 trains
    all groups for `epochs` at `base_lr / 2` for the head, spread down to
    `base_lr / 2 / lr_mult` for the first group.

    Args:
        model: a `TransferModel`.
        train: batched training dataset.
        validation: batched validation dataset or None.
        epochs: epochs of the unfrozen stage.
        freeze_epochs: epochs of the head-only stage.
        base_lr: the head's learning rate in stage 1.
        lr_mult: spread of the rates in stage 2.
        **stage_options: further `Stage` fields for both stages (e.g. `weight_decay`).

    Returns:
        The `History` over both stages.

    Example:
        >>> kerastl.fine_tune(model, train_ds, val_ds, epochs=4)
    """
    stages = [
        Stage(freeze_epochs, train=HEAD, lr=base_lr, **stage_options),
        Stage(epochs, train=ALL, lr=base_lr / 2, lr_mult=lr_mult, **stage_options),
    ]
    return FineTuner(model).fit(train, validation, stages=stages)


def _set_what_trains(model, stage: Stage) -> None:
    if stage.train == HEAD:
        freeze(model, train_bn=stage.train_bn, recompile=False)
    elif stage.train == ALL:
        unfreeze(model, train_bn=stage.train_bn, recompile=False)
    else:
        freeze_to(model, stage.train, train_bn=stage.train_bn, recompile=False)


def _optimizer(model, stage: Stage):
    options = {"weight_decay": stage.weight_decay} if stage.weight_decay else {}
    if stage.optimizer == "sgd":
        template = keras.optimizers.SGD(stage.lr, momentum=0.9, **options)
    elif stage.optimizer == "adamw":
        template = keras.optimizers.AdamW(stage.lr, **{"weight_decay": 0.004, **options})
    else:
        template = keras.optimizers.Adam(stage.lr, **options)
    if stage.lr_mult and stage.train != HEAD:
        return discriminative_optimizer(model, stage.lr, lr_mult=stage.lr_mult, optimizer=template)
    return template


def _loss(stage: Stage):
    if stage.label_smoothing:
        return SparseSmoothedCrossentropy(stage.label_smoothing, from_logits=True)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _extract(extractor: keras.Model, dataset):
    """Runs `extractor` over `dataset` once, keeping each batch's size and order."""
    import tensorflow as tf

    features, labels, sizes = [], [], []
    for inputs, targets in dataset:
        features.append(np.asarray(extractor(inputs, training=False)))
        labels.append(np.asarray(targets))
        sizes.append(len(labels[-1]))
    if not sizes:
        raise ValueError("Cannot cache features of an empty dataset.")
    if len(set(sizes[:-1])) > 1:
        raise ValueError(
            f"Batches of varying size cannot be cached in order. Received sizes: {sizes}."
        )
    cached = tf.data.Dataset.from_tensor_slices((np.concatenate(features), np.concatenate(labels)))
    return cached.batch(sizes[0]).cache().prefetch(tf.data.AUTOTUNE)
