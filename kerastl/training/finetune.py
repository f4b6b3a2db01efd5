"""`FineTuner`: train a `TransferModel` in stages, head first, then upper groups.

Each `Stage` says what trains (`"head"`, `"all"`, or a group and every
group after it), for how many epochs, with which optimizer and learning
rates (one rate, a discriminative spread with `lr_mult`, or layer-wise decay
with `lr_decay`), warm-up, and regularization (weight decay, label
smoothing, early stopping). Changing what trains goes through
`set_trainable_groups`'s rules (BatchNorm stays frozen unless `train_bn`)
and recompiles with a fresh optimizer.

Feature caching: a stage whose lower layers are all frozen runs them once
over the data and trains the upper part on the stored outputs (pooled
features for a head stage, the last frozen group's output for a top-group
stage). The upper layers are shared, so the model holds what was trained.
With an augmentation, caching needs `cache_views=K`: the features of K fixed
views of every training example are cached and one is served per example
each epoch (stages that train end to end draw fresh augmentations); without
it, cached features would replay one random draw, so stages train end to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Sequence

import keras

from kerastl._history import empty_history, extend_history
from kerastl._progress import resolve_verbose
from kerastl._validation import check_positive_int
from kerastl.data.augment import MIXINGS, label_mixing, one_hot_labels, views_of
from kerastl.data.augment import augmentation as augment_policy
from kerastl.data.sampling import balanced_class_weights
from kerastl.distribute.resume import restore_seed_states, seed_states
from kerastl.distribute.strategies import is_chief
from kerastl.freezing import freeze, freeze_to, unfreeze
from kerastl.fused_adam import FusedAdam, FusedAdamW
from kerastl.groups import COARSE, FINE, LayerGroups
from kerastl.models import TransferModel
from kerastl.optimizers import discriminative_optimizer
from kerastl.peft import TARGETS, adapter_groups
from kerastl.training import run_directory
from kerastl.training.drop_path import check_drop_path, reset_drop_path, set_drop_path
from kerastl.training.ema import EmaWeights
from kerastl.training.evaluation import Evaluation
from kerastl.training.evaluation import evaluate as evaluate_model
from kerastl.training.feature_cache import CacheRefused, FeatureStore, split_model
from kerastl.training.lora_stages import (
    DEFAULT_RANK,
    LORA,
    add_adapters_up_to,
    add_stage_adapters,
    check_lora_stages,
    first_adapted_group,
    stage_targets,
)
from kerastl.training.losses import SparseSmoothedCrossentropy
from kerastl.training.metrics import BalancedAccuracy
from kerastl.training.schedules import warmup_cosine
from kerastl.training.staged_backup import (
    BackupCallback,
    DataPasses,
    InterruptSignals,
    RunFinished,
    RunInterrupted,
    StagedBackup,
    load_arrays,
    run_signature,
    signature_differences,
)

HEAD, ALL = "head", "all"
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of fine-tuning.

    Args:
        epochs: epochs in this stage.
        train: `"head"`, `"all"`, or a group name (coarse, or fine such as
            `transformer_layer_4`): that group and every group after it
            train (`freeze_to`); `"lora"`: LoRA adapters on every backbone
            group (`rank` 8 unless given).
        lr: the head's (peak) learning rate.
        lr_mult: spread rates over the coarse training groups, the first at
            `lr / lr_mult` (fastai `slice`).
        lr_decay: layer-wise decay instead: each fine group below the head
            gets `lr_decay` times the rate of the one above it.
        optimizer: `adam`, `adamw` (Keras's, fused on TensorFlow:
            `kerastl.fused_adam`) or `sgd` (momentum 0.9).
        weight_decay: decoupled weight decay (biases and norms exempt).
        dropout: the head's dropout rate in this stage (None: the model's).
        label_smoothing: in [0, 1).
        patience: stop after this many epochs without a better validation
            loss and restore the stage's best weights (needs validation data).
        train_bn: let BatchNormalization layers in training groups update.
        warmup: fraction of the stage's steps spent rising linearly to `lr`.
        schedule: `constant` after warm-up, or `cosine` decay to 0.
        ema: keep an exponential moving average of the trained weights with
            this momentum (e.g. 0.99; Keras's `use_ema`): validation, the
            best-epoch checkpoint and the stage's final weights are the
            averaged ones; None: off.
        mixup: MixUp's Beta parameter (e.g. 0.2): pairs of training images
            and their labels blended (`kerastl.data.label_mixing`); the
            stage trains end to end on soft labels; images only.
        cutmix: CutMix's Beta parameter (e.g. 1.0), likewise; give one of
            `mixup` and `cutmix`.
        drop_path: stochastic depth in the backbone blocks this stage trains:
            the deepest block's rate, shallower ones less (in proportion to
            the rates the backbone was built with); frozen blocks never drop.
            None: trained blocks at their built rates (Keras's EfficientNets
            0.2 deep down; kerastl's Lite0 0). Backbones without drop-path
            layers refuse a rate > 0 (`kerastl.training.drop_path`).
        image_size: train at this image side (progressive resizing): the
            stage's training images are resized to it and it trains end to end
            (`TransferModel.at_any_image_size`); validation, the best-epoch
            choice and the final model stay at the model's input size. Image
            models whose backbone takes any size; None: the model's size.
        rank: train the backbone groups of `train` through LoRA adapters of
            this rank (`kerastl.lora`): only the adapters and the head train,
            and the feature cache covers every group below the first adapted
            one. Adapters stay in the model (exports merge them); a group
            holding adapters trains only them in later stages too.
        lora_alpha: the adapters' scale is `lora_alpha / rank` (None: 1).
        lora_targets: which layers get adapters: a preset of
            `kerastl.peft.TARGETS` (`auto`: attention query/value for
            transformers, convolutions for CNNs) or layer-name patterns.

    Example:
        >>> kerastl.Stage(epochs=5, train="block6", lr=1e-4, lr_mult=10, patience=2)
        >>> kerastl.Stage(epochs=3, train="lora", rank=8, lr=1e-3)
    """

    epochs: int
    train: str = HEAD
    lr: float = 1e-3
    lr_mult: float | None = None
    lr_decay: float | None = None
    optimizer: str = "adam"
    weight_decay: float | None = None
    dropout: float | None = None
    label_smoothing: float = 0.0
    patience: int | None = None
    train_bn: bool = False
    warmup: float = 0.0
    schedule: str = "constant"
    ema: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    drop_path: float | None = None
    image_size: int | None = None
    rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: str | tuple[str, ...] = "auto"

    def __post_init__(self):
        check_positive_int("epochs", self.epochs)
        if not isinstance(self.train, str) or not self.train:
            raise ValueError(
                "`train` must be 'head', 'all', 'lora' or a group name. "
                f"Received: train={self.train!r}."
            )
        self._check_lora()
        if not self.lr > 0:
            raise ValueError(f"`lr` must be positive. Received: lr={self.lr!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"`optimizer` must be one of {OPTIMIZERS}. Received: optimizer={self.optimizer!r}."
            )
        if self.lr_mult is not None and self.lr_mult < 1:
            raise ValueError(f"`lr_mult` must be >= 1. Received: lr_mult={self.lr_mult!r}.")
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise ValueError(f"`lr_decay` must be in (0, 1]. Received: lr_decay={self.lr_decay!r}.")
        if self.lr_mult is not None and self.lr_decay is not None:
            raise ValueError(
                "Give `lr_mult` or `lr_decay`, not both. "
                f"Received: lr_mult={self.lr_mult}, lr_decay={self.lr_decay}."
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"`patience` must be >= 1. Received: patience={self.patience!r}.")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(
                "`label_smoothing` must be in [0, 1). "
                f"Received: label_smoothing={self.label_smoothing!r}."
            )
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={self.dropout!r}.")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"`warmup` must be in [0, 1). Received: warmup={self.warmup!r}.")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"`ema` must be in (0, 1). Received: ema={self.ema!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"`schedule` must be one of {SCHEDULES}. Received: schedule={self.schedule!r}."
            )
        for kind in MIXINGS:
            strength = getattr(self, kind)
            if strength is not None and (isinstance(strength, bool) or not strength > 0):
                raise ValueError(f"`{kind}` must be > 0. Received: {kind}={strength!r}.")
        if self.mixup is not None and self.cutmix is not None:
            raise ValueError(
                "Give `mixup` or `cutmix`, not both. "
                f"Received: mixup={self.mixup}, cutmix={self.cutmix}."
            )
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise ValueError(
                f"`drop_path` must be in [0, 1). Received: drop_path={self.drop_path!r}."
            )
        if self.image_size is not None:
            check_positive_int("image_size", self.image_size)

    def _check_lora(self) -> None:
        if self.train == LORA and self.rank is None:
            object.__setattr__(self, "rank", DEFAULT_RANK)
        if self.rank is not None:
            check_positive_int("rank", self.rank)
            if self.train == HEAD:
                raise ValueError(
                    "A LoRA stage adapts backbone groups; `train='head'` trains only the head. "
                    f"Received: train='head', rank={self.rank}."
                )
        elif self.lora_alpha is not None:
            raise ValueError(
                f"`lora_alpha` needs `rank`. Received: lora_alpha={self.lora_alpha!r}, rank=None."
            )
        if self.lora_alpha is not None and (
            isinstance(self.lora_alpha, bool) or not self.lora_alpha > 0
        ):
            raise ValueError(
                f"`lora_alpha` must be a positive number. Received: lora_alpha={self.lora_alpha!r}."
            )
        targets = self.lora_targets
        if isinstance(targets, list):
            object.__setattr__(self, "lora_targets", targets := tuple(targets))
        if not (isinstance(targets, str) and targets in TARGETS) and not (
            isinstance(targets, tuple) and targets and all(isinstance(t, str) for t in targets)
        ):
            raise ValueError(
                f"`lora_targets` must be one of {TARGETS} or a list of layer-name patterns. "
                f"Received: lora_targets={self.lora_targets!r}."
            )

    def first_trained(self, model: TransferModel) -> tuple[str, str]:
        """`(group, granularity)`: the lowest group this stage trains (`head`,
        `all`, or a group); for a LoRA stage the first group holding adapters.

        Example:
            >>> Stage(3, train="lora").first_trained(text_model)
            ('layer_0', 'fine')
        """
        if self.rank:
            return first_adapted_group(model, self), FINE
        return self.train, granularity_of(model, self.train)

    @property
    def label(self) -> str:
        """What trains, for reports: `head`, `block6`, `lora r8`, `block6 lora r8`."""
        if not self.rank:
            return self.train
        return f"{'' if self.train == LORA else self.train + ' '}lora r{self.rank}"

    @property
    def mixing(self) -> tuple[str, float] | None:
        """`("mixup" | "cutmix", strength)` when the stage mixes images, else None."""
        for kind in MIXINGS:
            if getattr(self, kind) is not None:
                return kind, getattr(self, kind)
        return None

    def end_to_end_reason(self, model: TransferModel) -> str | None:
        """Why this stage cannot train on cached features, or None.

        Args:
            model: the `TransferModel` it trains.

        Returns:
            A phrase such as `"mixup mixes the images of each batch"`, or None.
        """
        if self.mixing:
            return f"{self.mixing[0]} mixes the images of each batch"
        if self.resizes(model):
            return f"the stage trains at {self.image_size} px"
        return None

    def resizes(self, model: TransferModel) -> bool:
        """Whether the stage trains at another size than `model`'s input."""
        return self.image_size is not None and tuple(model.input_shape[1:3]) != (
            self.image_size,
            self.image_size,
        )

    def prepare(self, model: TransferModel) -> None:
        """Sets `model`'s trainable flags, head dropout and drop-path rates for
        this stage (no recompile); `reset_drop_path(model)` after it.

        Args:
            model: a `TransferModel`.

        Example:
            >>> Stage(3, train="block6", dropout=0.5, drop_path=0.2).prepare(model)
        """
        model.dropout_layer.rate = model.dropout if self.dropout is None else self.dropout
        set_stage_trainable(model, self)
        set_drop_path(model, self.drop_path)

    def build_optimizer(self, model: TransferModel, steps: int) -> keras.optimizers.Optimizer:
        """This stage's optimizer: one rate, or one per group (`lr_mult`, `lr_decay`).

        Args:
            model: the `TransferModel` (its groups, for per-group rates).
            steps: the stage's training steps (for warm-up and cosine decay).

        Returns:
            A fresh, unbuilt optimizer (a `GroupOptimizer` for per-group rates).

        Example:
            >>> Stage(5, train="all", lr=1e-3, lr_mult=10).build_optimizer(model, 500)
        """
        schedule = None
        if self.warmup or self.schedule == "cosine":
            if steps <= 0:
                raise ValueError(
                    "A warm-up or cosine schedule needs a training dataset of known length. "
                    f"Received: cardinality {steps // self.epochs}."
                )
            alpha = 1.0 if self.schedule == "constant" else 0.0  # CosineDecay alpha=1: constant
            schedule = warmup_cosine(steps, int(self.warmup * steps), alpha=alpha)
        grouped = self.train != HEAD and bool(self.lr_mult or self.lr_decay)
        # A schedule is given at construction: assigning one later replaces a
        # tracked variable, and the model can then no longer be exported.
        rate = schedule(self.lr) if schedule is not None and not grouped else self.lr
        options = {"weight_decay": self.weight_decay} if self.weight_decay else {}
        if self.ema is not None:
            options.update(use_ema=True, ema_momentum=self.ema)
        if self.optimizer == "sgd":
            template = keras.optimizers.SGD(rate, momentum=0.9, **options)
        elif self.optimizer == "adamw":
            template = FusedAdamW(rate, **{"weight_decay": 0.004, **options})
        else:
            template = FusedAdam(rate, **options)
        if grouped:
            return discriminative_optimizer(
                model,
                self.lr,
                lr_mult=self.lr_mult,
                decay=self.lr_decay,
                optimizer=template,
                schedule=schedule,
            )
        return template

    def build_loss(self) -> keras.losses.Loss:
        """Cross-entropy on logits, label-smoothed if `label_smoothing`: sparse,
        or on soft labels when the stage mixes images."""
        if self.mixing:
            return keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=self.label_smoothing
            )
        if self.label_smoothing:
            return SparseSmoothedCrossentropy(self.label_smoothing, from_logits=True)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @property
    def rate_rule(self) -> str:
        """How the rates are spread: `one`, `spread xN` or `decay D` (for reports)."""
        if self.train != HEAD and self.lr_mult:
            return f"spread x{self.lr_mult:g}"
        if self.train != HEAD and self.lr_decay:
            return f"decay {self.lr_decay:g}"
        return "one"


class FineTuner:
    """Runs `Stage`s on a `TransferModel`, caching frozen layers' outputs.

    Args:
        model: a classification `TransferModel` (built inside `strategy.scope()`).
        strategy: the tf.distribute strategy (default: the model's).
        cache_features: None (default): cache whenever a stage's lower layers
            are frozen (and, with an augmentation, `cache_views` is set), else
            say why not and train end to end; True: the same, but a model that
            cannot be cut there, or an augmentation without `cache_views`, is
            an error; False: never. A MixUp/CutMix stage always trains end to end.
        augmentation: a Keras layer applied to training inputs only
            (`training=True`), inside the input pipeline: never part of the
            model, so never in an export; or a policy or list of names for
            `kerastl.data.augmentation` (e.g. `"orientation_free"`, seed 0).
        cache_views: with an augmentation, cache the frozen features of this
            many fixed views of every training example (`kerastl.data.views_of`:
            the 8 exact symmetries for `dihedral`/`orientation_free` with
            8, else seeded random draws) and serve one view per example each epoch,
            drawn with `cache_shuffle_seed` (0 if None). None: no caching
            with an augmentation.
        cache_memory_mb: cached features kept in memory up to this size,
            written to `cache_dir` (or a temporary folder) beyond it.
        cache_dir: where features beyond the memory bound go.
        cache_shuffle_seed: cached training batches come in a new order each
            epoch from this seed (a cache stores one pass of `train`, so
            without it every epoch would replay that pass's order); None
            keeps the stored order (then the result equals end-to-end
            training on the same unshuffled data).
        class_weight: None, `"balanced"` (inverse class frequency in
            `train`), or a `{class: weight}` dict.
        metrics: Keras metrics; `"balanced_accuracy"` adds `BalancedAccuracy`.
        monitor: the logged value that picks the best epoch (default
            `val_loss`, or `loss` without validation data).
        restore_best: end with the best epoch's weights over all stages
            (when the monitored value is a validation one).
        run_dir: write history, best checkpoint, TensorBoard logs, plots and
            `report.md` there (see `kerastl.training.run_directory`); None: nothing.
        callbacks: further Keras callbacks for every stage.
        jit_compile: compile the training step with XLA (`compile(jit_compile=...)`).
        backup_share: with a backup (`fit(backup_dir=...)`, or a `run_dir`),
            the most of the training time epoch-end backups may take (0.03):
            short epochs are backed up every few epochs; stage ends and stops
            always are. None: every epoch.
        verbose: `0` (silent, caching too), `1` (progress bars), `2` (a line
            per epoch, and every few seconds while caching) or `"auto"`: `1`
            on a terminal, `2` when the output is a file or a CI log.

    Example:
        >>> tuner = kerastl.FineTuner(model, metrics=("accuracy", "balanced_accuracy"),
        ...                           run_dir="runs/elpv")
        >>> history = tuner.fit(train_ds, val_ds, stages=[kerastl.Stage(3),
        ...                     kerastl.Stage(5, train="block6", lr=1e-4, lr_mult=10)])
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        strategy=None,
        cache_features: bool | None = None,
        augmentation: keras.layers.Layer | str | Sequence[str] | None = None,
        cache_views: int | None = None,
        cache_memory_mb: float = 1024,
        cache_dir: str | os.PathLike | None = None,
        cache_shuffle_seed: int | None = 0,
        class_weight: str | dict | None = None,
        metrics: tuple = ("accuracy",),
        monitor: str | None = None,
        restore_best: bool = True,
        run_dir: str | os.PathLike | None = None,
        callbacks: tuple = (),
        jit_compile: bool | str = "auto",
        backup_share: float | None = 0.03,
        verbose: str | int = "auto",
    ):
        if not isinstance(model, TransferModel):
            raise TypeError(f"FineTuner needs a kerastl.TransferModel. Received: model={model!r}.")
        if isinstance(augmentation, str | list | tuple):
            augmentation = augment_policy(augmentation)
        if cache_features and augmentation is not None and cache_views is None:
            raise ValueError(
                "Cannot cache features with augmentation without `cache_views`: the cached "
                "features would hold one random augmentation of each input, replayed every "
                "epoch, instead of a new one. Pass cache_views=K (K fixed views per example, "
                "one served each epoch), cache_features=None (cache only without augmentation) "
                f"or False. Received: cache_features=True, augmentation={augmentation!r}."
            )
        if cache_views is not None and augmentation is None:
            raise ValueError(
                "`cache_views` needs an `augmentation` to draw the views from. "
                f"Received: cache_views={cache_views!r}, augmentation=None."
            )
        views = None
        if cache_views is not None:
            views = views_of(augmentation, cache_views, seed=cache_shuffle_seed or 0)
        if not (class_weight in (None, "balanced") or isinstance(class_weight, dict)):
            raise ValueError(
                "`class_weight` must be None, 'balanced' or a dict. "
                f"Received: class_weight={class_weight!r}."
            )
        self.model = model
        self.strategy = strategy or model.distribute_strategy
        self.cache_features = cache_features is not False and (
            augmentation is None or views is not None
        )
        self._cache_required = cache_features is True
        self.augmentation = augmentation
        self.class_weight = class_weight
        self.metrics = tuple(metrics)
        self.monitor = monitor
        self.restore_best = restore_best
        self.run_dir = os.fspath(run_dir) if run_dir is not None else None
        self.callbacks = tuple(callbacks)
        self.jit_compile = jit_compile
        if backup_share is not None and not 0 < backup_share <= 1:
            raise ValueError(
                "`backup_share` must be in (0, 1] or None. "
                f"Received: backup_share={backup_share!r}."
            )
        self.backup_share = backup_share
        self.verbose = resolve_verbose(verbose)  # "auto": a bar on a terminal, else lines
        self._evaluated: list = []
        self.stage_starts: list[int] = []
        self.backup_seconds = 0.0  # time spent writing backups in the last `fit`
        self.stage_summaries: list[dict] = []
        self.recorder: run_directory.RunRecorder | None = None
        self.features = FeatureStore(  # the run's feature caches (memory bound, folder, order)
            memory_limit_mb=cache_memory_mb,
            directory=cache_dir,
            shuffle_seed=cache_shuffle_seed,
            views=views,
            view_seed=cache_shuffle_seed or 0,
            verbose=self.verbose,
        )
        if (
            self.verbose
            and augmentation is not None
            and cache_views is None
            and cache_features is None
        ):
            print(
                "kerastl: not caching features: the training inputs are augmented "
                "(cache_views=K caches K views of each)."
            )

    def fit(
        self,
        train,
        validation=None,
        *,
        stages,
        backup_dir: str | os.PathLike | bool | None = None,
    ) -> keras.callbacks.History:
        """Trains stage after stage; epochs are numbered across stages.

        With a backup (`backup_dir`, or `run_dir/backup` by default), a run
        that was killed resumes when `fit` is called again with the same
        stages and data: from its last epoch (or the batch where SIGTERM or
        Ctrl-C stopped it), with the model, optimizer, best epoch, history,
        seed-generator states and the data's order as they were. Feature
        caches are computed again (deterministic from the restored weights).

        Args:
            train: a batched `tf.data.Dataset` of `(inputs, integer labels)`;
                a text model's inputs may be raw strings (`TransferModel.prepare_data`).
            validation: the same for validation, or None.
            stages: the `Stage`s, in order.
            backup_dir: where backups go (`kerastl.training.staged_backup`);
                None: `run_dir/backup` when there is a `run_dir`, else none;
                False: none.

        Returns:
            A `History` over all stages; `stage_starts` holds each stage's
            first epoch. With `restore_best`, the model ends with the best
            epoch's weights (`tuner.recorder.best_epoch`).

        Raises:
            RunInterrupted: SIGTERM or Ctrl-C stopped the run, after a backup.
            RunFinished: the backup holds a finished run.
            ValueError: the backup's run had other stages or settings (the
                differing keys named).
            BackupError: backups exist and none of them is whole.
        """
        stages = check_stages(self.model, stages, validation)
        monitor = self.monitor or ("val_loss" if validation is not None else "loss")
        check_monitor(monitor, self.metrics, validation=validation is not None)
        self._backup, state = self._open_backup(backup_dir, stages, monitor)
        self.backup_seconds = 0.0
        if self.run_dir:
            os.makedirs(self.run_dir, exist_ok=True)
        self.recorder = run_directory.RunRecorder(self.model, self.run_dir, monitor)
        train = self.model.prepare_data(train)  # raw strings -> tokens; wrong inputs raise here
        validation = self.model.prepare_data(validation)
        augmented = train if self.augmentation is None else _augmented(train, self.augmentation)
        self._passes = self.features.passes = DataPasses(train, augmented)
        class_weight = self._class_weight(train)
        history = empty_history()
        self.stage_starts, self.stage_summaries = [], []
        epoch = 0
        if state is not None:
            epoch = self._restore_run(state, history)
        with InterruptSignals(self._backup is not None) as self._signals, self._resume_hint():
            for number, stage in enumerate(stages, start=1):
                if state is not None and number - 1 < state["stage"] + state["stage_done"]:
                    continue  # trained before the interruption: its epochs are in the history
                resume = None
                if state is not None:
                    resume = self._restore_model(state, stages)
                    state = None
                first_epoch = epoch if resume is None else resume["stage_first_epoch"]
                if resume is None:
                    self.stage_starts.append(epoch)
                self.recorder.stage = f"{number}:{stage.label}"
                started = time.perf_counter()
                result, cached = self._run(
                    stage,
                    number - 1,
                    stages[number:],
                    train,
                    augmented,
                    validation,
                    first_epoch,
                    class_weight,
                    resume,
                )
                epoch = (first_epoch if resume is None else resume["epoch"]) + len(result.epoch)
                self.stage_summaries.append(
                    {
                        "stage": self.recorder.stage,
                        "epochs": epoch - first_epoch,
                        "lr": stage.lr,
                        "rates": stage.rate_rule,
                        "cached": cached or "no",
                        "trainable": sum(math.prod(v.shape) for v in self.model.trainable_weights),
                        "steps": int(train.cardinality()),
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                extend_history(history, result.history, range(epoch - len(result.epoch), epoch))
                self._save_backup(number - 1, first_epoch, epoch, 0, stage_done=True)
        history.stage_starts = list(self.stage_starts)
        if self.recorder.best is None:
            warnings.warn(
                f"`monitor={monitor!r}` never appeared in the logs, so no best epoch was "
                f"kept. Logged: {sorted(history.history)}.",
                stacklevel=2,
            )
        restore = self.restore_best and monitor.startswith("val_")
        if restore and self.recorder.restore_best() and self.verbose:
            print(
                f"kerastl: restored epoch {self.recorder.best_epoch} "
                f"({monitor} = {self.recorder.best:.4f})."
            )
        if self._backup is not None and is_chief(self.strategy):
            self._backup.finish(self._run_state(len(stages) - 1, epoch, epoch, 0, stage_done=True))
        return history

    @contextlib.contextmanager
    def _resume_hint(self):
        """Adds where the backup is and how to resume to a `RunInterrupted`."""
        try:
            yield
        except RunInterrupted as stopped:
            where = self._backup.directory if self._backup is not None else None
            command = (
                f" (`kerastl train --resume {self.run_dir}` for a run of that command)"
                if self.run_dir
                else ""
            )
            raise RunInterrupted(
                f"stopped by {stopped}; backed up in {where}. Resume by running it again "
                f"with the same settings{command}."
            ) from None

    def _open_backup(self, backup_dir, stages, monitor):
        """The run's `StagedBackup` (or None) and the state to resume (or None)."""
        if backup_dir is False or (backup_dir is None and not self.run_dir):
            self._signature = None
            return None, None
        directory = backup_dir if backup_dir not in (None, True) else None
        backup = StagedBackup(directory or os.path.join(self.run_dir, "backup"))
        self._signature = run_signature(
            stages,
            monitor=monitor,
            metrics=self.metrics,
            class_weight=self.class_weight,
            cache_views=self.features.views.count if self.features.views else None,
            augmentation=type(self.augmentation).__name__ if self.augmentation else None,
        )
        state = backup.load()
        if state is None:
            return backup, None
        if state.get("finished"):
            raise RunFinished(
                f"The run backed up in {backup.directory} finished ({state['epoch']} epochs, "
                f"best epoch {state['best_epoch']}): nothing to resume. Train again with "
                "another run directory or backup_dir, or move that folder aside."
            )
        differences = signature_differences(state["signature"], self._signature)
        if differences:
            raise ValueError(
                f"The run backed up in {backup.directory} had other settings, so it cannot "
                f"be resumed with these: {'; '.join(differences)}. Resume with the same "
                "settings, or train again in another run directory."
            )
        if self.verbose:
            where = f"epoch {state['epoch'] + 1}" + (
                f", after batch {state['step']}" if state["step"] else ""
            )
            caches = (
                "; feature caches are computed again from the restored weights (cheaper "
                "than keeping them: deterministic)"
                if self.cache_features
                else ""
            )
            print(f"kerastl: resuming the run backed up in {backup.directory}: {where}{caches}.")
        return backup, state

    def _restore_run(self, state: dict, history) -> int:
        """Puts the backed-up history, best epoch and stage records back; returns
        the epochs done."""
        best = load_arrays(state["path"]["best"]) if "best" in state["path"] else None
        self.recorder.restore(state["history"], state["best"], state["best_epoch"], best)
        for row in self.recorder.rows:
            logged = {key: [value] for key, value in row.items() if key not in ("epoch", "stage")}
            extend_history(history, logged, [row["epoch"] - 1])
        self.stage_starts = list(state["stage_starts"])
        self.stage_summaries = [dict(summary) for summary in state["stage_summaries"]]
        return state["epoch"]

    def _restore_model(self, state: dict, stages) -> dict | None:
        """Loads the backed-up weights and seed states; returns what the stage in
        progress needs to continue (None when the backup is at a stage's end)."""
        with self.strategy.scope():  # the LoRA stages run so far added adapters
            add_adapters_up_to(self.model, stages[: state["stage"] + 1])
        for variable, value in zip(
            self.model.weights, load_arrays(state["path"]["model"]), strict=True
        ):
            variable.assign(value)
        restore_seed_states(self.model, state["seed_states"])
        if state["stage_done"]:
            self._passes.resume(state["passes"]["extracted_at"], state["passes"])
            return None
        self._passes.resume(state["passes"]["extracted_at"], state["stage_start_passes"])
        return state

    def _run(
        self,
        stage: Stage,
        index: int,
        following,
        train,
        augmented,
        validation,
        first_epoch,
        class_weight,
        resume: dict | None = None,
    ):
        """One stage: cached from `train` (its views, if any) or end to end on
        `augmented`; from the backed-up epoch and batch with `resume`."""
        model = self.model
        callbacks = [self.recorder, *self.callbacks]
        stopping = None
        if stage.patience:
            stopping = _ResumableEarlyStopping(
                patience=stage.patience, restore_best_weights=True, resume=resume
            )
            callbacks.append(stopping)
        if self.run_dir:
            callbacks.append(
                keras.callbacks.TensorBoard(os.path.join(self.run_dir, "logs"), write_graph=False)
            )
        if stage.ema is not None:
            callbacks.append(EmaWeights())  # the others see the averaged weights
        steps = int(train.cardinality()) * stage.epochs
        end_to_end = stage.end_to_end_reason(model)
        with self.strategy.scope():
            weights_before = model.weights
            stage.prepare(model)
            if len(model.weights) != len(weights_before):  # a LoRA stage added adapters
                self.recorder.weights_added(weights_before)
            first, granularity = stage.first_trained(model)
            split = source = None
            target = model.at_any_image_size() if stage.resizes(model) else model
            if self.cache_features and end_to_end and self.verbose:
                print(f"kerastl: not caching: {end_to_end}.")
            if self.cache_features and first != ALL and not end_to_end:
                try:
                    split = split_model(model, first, granularity)
                    target = split.trainer
                except CacheRefused as refused:
                    if self._cache_required:
                        raise
                    if self.verbose:
                        print(f"kerastl: not caching: {refused}")
                source = None if split is None else self._lowest_later_cut(split, following)
            target.compile(
                stage.build_optimizer(model, steps),
                stage.build_loss(),
                metrics=self._metric_objects(),
                jit_compile=self.jit_compile,
            )
            if resume is not None:  # the optimizer's state as backed up
                target.optimizer.build(target.trainable_variables)
                target.load_weights(resume["path"]["fit"])
        done = 0 if resume is None else resume["epoch"] - first_epoch
        stage_start_passes = (
            self._passes.expected() if resume is None else resume["stage_start_passes"]
        )
        if split is not None:
            if split.note and self.verbose:
                print(f"kerastl: caching {split.boundary}: {split.note}.")
            augmented, validation = self.features.datasets(
                split, train, validation, source=source, skip_epochs=done
            )
        if stage.resizes(model):
            augmented = _resized(augmented, stage.image_size)
        if stage.mixing:
            augmented, validation = _mixed(
                augmented, validation, stage, model.num_classes, seed=first_epoch
            )
        self._passes.catch_up(None if resume is None else resume["fit_start_passes"])
        fit_start_passes = self._passes.counts() if resume is None else resume["fit_start_passes"]
        if split is None:
            for _ in range(done):  # the epochs trained before the interruption, data only
                self._passes.replay_epoch(augmented)

        def save(epoch: int, step: int) -> float:
            return self._save_backup(
                index,
                first_epoch,
                epoch,
                step,
                fit_model=target,
                stopping=stopping,
                passes={
                    "stage_start_passes": stage_start_passes,
                    "fit_start_passes": fit_start_passes,
                },
            )

        step = 0 if resume is None else resume["step"]
        if self._backup is not None:
            callbacks.append(
                BackupCallback(
                    save,
                    self._signals,
                    self._passes,
                    end_to_end=split is None,
                    step_offset=step,
                    share=self.backup_share,
                )
            )
        start = first_epoch + done
        try:
            fits = []
            if step:  # the rest of the interrupted epoch, then the stage's other epochs
                fits.append((augmented.skip(step), start, start + 1))
                start += 1
            if start < first_epoch + stage.epochs:
                fits.append((augmented, start, first_epoch + stage.epochs))
            result = None
            for number, (data, initial, last) in enumerate(fits, start=1):
                if stopping is not None and stopping.stopped_epoch:
                    break
                final = number == len(fits)
                if stopping is not None:
                    stopping.final = final
                keep_raw = [] if final else [_RawWeightsKept()]  # Keras writes EMA in at the end
                part = target.fit(
                    data,
                    validation_data=validation,
                    initial_epoch=initial,
                    epochs=last,
                    callbacks=callbacks + keep_raw,
                    class_weight=class_weight,
                    shuffle=False,  # the pipeline shuffles (Keras ignores it, and warns)
                    verbose=self.verbose,
                )
                for kept in keep_raw:
                    kept.put_back()
                result = _joined(result, part)
        finally:
            reset_drop_path(model)
        if target is not model:
            # The shared upper layers trained under the trainer's optimizer: make it
            # the model's, so `model.optimizer` and a saved model hold its state.
            with self.strategy.scope():
                model.compile(
                    target.optimizer,
                    stage.build_loss(),
                    metrics=self._metric_objects(),
                    jit_compile=self.jit_compile,
                )
        return result or empty_history(), split.boundary if split is not None else None

    def _save_backup(
        self,
        index: int,
        first_epoch: int,
        epoch: int,
        step: int,
        *,
        stage_done: bool = False,
        fit_model=None,
        stopping=None,
        passes: dict | None = None,
    ) -> float:
        """Writes a backup of the run as it stands (see `staged_backup`); returns
        the seconds it took."""
        if self._backup is None or not is_chief(self.strategy):
            return 0.0
        started = time.perf_counter()
        state = self._run_state(index, first_epoch, epoch, step, stage_done=stage_done)
        state.update(passes or {})
        state["stopping"] = None if stopping is None else stopping.resumable_state()
        arrays = {"best": self.recorder.best_weights}
        if stopping is not None:
            arrays["stopping"] = stopping.best_weights
        self._backup.save(state, model=self.model, fit_model=fit_model or self.model, arrays=arrays)
        took = time.perf_counter() - started
        self.backup_seconds += took
        return took

    def _run_state(
        self, index: int, first_epoch: int, epoch: int, step: int, *, stage_done: bool
    ) -> dict:
        recorder = self.recorder
        return {
            "signature": self._signature,
            "finished": False,
            "stage": index,
            "stage_done": stage_done,
            "stage_first_epoch": first_epoch,
            "epoch": epoch,
            "step": step,
            "history": recorder.rows,
            "best": recorder.best,
            "best_epoch": recorder.best_epoch,
            "stage_starts": self.stage_starts,
            "stage_summaries": self.stage_summaries,
            "seed_states": seed_states(self.model),
            "passes": self._passes.counts(),
        }

    def _lowest_later_cut(self, split, following):
        """The lowest cut below `split` that the following stages will cache at,
        up to the first stage that trains every layer (which changes them all);
        mixing and resized stages train end to end and cache nothing."""
        lowest = None
        for stage in following:
            first, granularity = stage.first_trained(self.model)
            if first == ALL:
                break
            if stage.end_to_end_reason(self.model):
                continue
            try:
                later = split_model(self.model, first, granularity)
            except CacheRefused:
                continue
            if later.is_below(lowest or split):
                lowest = later
        return lowest

    def _metric_objects(self) -> list:
        return [
            BalancedAccuracy(self.model.num_classes) if metric == "balanced_accuracy" else metric
            for metric in self.metrics
        ]

    def _class_weight(self, train) -> dict | None:
        if self.class_weight != "balanced":
            return self.class_weight
        self._passes.counted()
        return balanced_class_weights(train, self.model.num_classes)

    def evaluate(self, test, *, tta: bool | str = False) -> Evaluation:
        """Scores the trained model on `test`: meant for the test split, once, at the end.

        Args:
            test: batches of `(inputs, labels)`, held out of everything that
                chose the model (epochs, settings).
            tta: also score the mean probability over test-time views: True
                (`dihedral`, the 8 symmetries), `"flip"`, `"dihedral"`, or False.

        Returns:
            An `Evaluation` (`kerastl.evaluate`): `.plain` and `.tta` scores.

        Warns:
            UserWarning: when the same dataset is evaluated a second time
                (choosing anything on it would make its score optimistic).

        Example:
            >>> tuner.fit(train_ds, val_ds, stages=stages)
            >>> print(tuner.evaluate(test_ds, tta=True).tta.one_line())
        """
        if any(seen is test for seen in self._evaluated):
            warnings.warn(
                "This dataset was evaluated before: a test split scored more than once "
                "invites choosing on it. Choose on validation data; read the test once.",
                stacklevel=2,
            )
        self._evaluated.append(test)
        name = "dihedral" if tta is True else ("none" if tta is False else tta)
        return evaluate_model(self.model, test, tta=name)

    def write_report(
        self,
        validation=None,
        *,
        title: str = "Fine-tuning run",
        extra_sections: tuple[str, ...] = (),
        save_model: bool = True,
    ) -> str:
        """Writes the plots, the final model and `report.md` into `run_dir`
        (`run_directory.write_run_report` on this run; same arguments).

        Returns:
            The path of `report.md`.

        Example:
            >>> tuner.fit(train_ds, val_ds, stages=stages)
            >>> print(open(tuner.write_report(val_ds)).read())
        """
        if not self.run_dir or self.recorder is None or not self.recorder.rows:
            raise ValueError("`write_report` needs a FineTuner with `run_dir` after `fit`.")
        return run_directory.write_run_report(
            self.model,
            self.recorder,
            self.stage_starts,
            self.stage_summaries,
            validation,
            title=title,
            extra_sections=extra_sections,
            save_model=save_model,
            verbose=self.verbose,
        )


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


def logged_names(metrics, *, validation: bool) -> list[str]:
    """The values `fit` logs for these metrics: `loss`, each metric, and `val_` twins.

    Args:
        metrics: metric names (`"accuracy"`, `"balanced_accuracy"`, ...) or objects.
        validation: whether there is validation data.

    Returns:
        The logged names, training ones first.

    Example:
        >>> logged_names(("accuracy",), validation=True)
        ['loss', 'accuracy', 'val_loss', 'val_accuracy']
    """
    names = ["loss"]
    for metric in metrics:
        name = metric if isinstance(metric, str) else getattr(metric, "name", None)
        names.append(name or getattr(metric, "__name__", str(metric)))
    return names + [f"val_{name}" for name in names] if validation else names


def check_monitor(monitor: str, metrics, *, validation: bool) -> None:
    """Raises before any training if `monitor` is not a value `fit` will log.

    Args:
        monitor: the value that picks the best epoch (e.g. `val_balanced_accuracy`).
        metrics: the metrics training logs (see `logged_names`).
        validation: whether there is validation data.

    Raises:
        ValueError: naming the closest logged value and all of them.

    Example:
        >>> check_monitor("val_acc", ("accuracy",), validation=True)
        Traceback (most recent call last):
        ValueError: ... Did you mean 'val_accuracy'? ...
    """
    import difflib

    names = logged_names(metrics, validation=validation)
    if monitor in names:
        return
    near = difflib.get_close_matches(monitor, names, n=1, cutoff=0.5)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    without = "" if validation else " (there is no validation data, so no `val_` values)"
    raise ValueError(
        f"`monitor` names a value training will not log{without}.{hint} Logged values: "
        f"{names}. Received: monitor={monitor!r}."
    )


def granularity_of(model, group: str) -> str:
    """`coarse` or `fine`: which kind of group `group` names.

    Args:
        model: a `TransferModel`.
        group: `head`, `all`, or a group name.

    Returns:
        The granularity in which `group` is a group (coarse preferred).

    Example:
        >>> granularity_of(model, "transformer_layer_4")
        'fine'
    """
    if group in (HEAD, ALL, LORA):
        return COARSE
    groups = LayerGroups.of(model)
    try:
        return groups.granularity_of(group)
    except ValueError:
        raise ValueError(
            f"Unknown layer group {group!r}. Valid groups: 'head', 'all', 'lora', {groups.names()} "
            f"or fine groups {groups.names('fine')}. Received: train={group!r}."
        ) from None


def check_stages(model: TransferModel, stages, validation=None) -> list[Stage]:
    """Checks every stage against `model` before any of them runs; the model is
    left exactly as it was (flags, adapters, rates).

    Args:
        model: the `TransferModel` the stages will train.
        stages: the `Stage`s, in order.
        validation: the validation data, or None (early stopping needs it).

    Returns:
        The stages as a list.

    Raises:
        ValueError: a stage that cannot run on `model` (an unknown group,
            mixing on text, drop path where nothing trained can drop, a LoRA
            rank that clashes with an earlier one, ...), named.

    Example:
        >>> check_stages(model, [Stage(2, train="head"), Stage(3, train="block6", drop_path=0.1)])
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
    for stage in stages:
        granularity_of(model, stage.train)  # unknown groups fail before any training
        if stage.mixing and model.modality != "image":
            kind, strength = stage.mixing
            raise ValueError(
                f"MixUp and CutMix mix images; this is a {model.modality} model. "
                f"Received: {kind}={strength!r}."
            )
        if stage.resizes(model):
            model.check_any_image_size()
        if stage.drop_path:  # a stage with nothing that can drop raises here
            check_drop_path(model, stage_trained_layers(model, stage), stage.drop_path)
    check_lora_stages(model, stages)
    return stages


def stage_trained_layers(model, stage: Stage) -> list[keras.layers.Layer]:
    """The layers of the groups `stage` trains, read off the resolved groups.

    The model is left as it is (no trainable flag, adapter or rate changes),
    so stages can be checked before any of them runs.

    Args:
        model: a `TransferModel`.
        stage: the `Stage`.

    Returns:
        The trained groups' layers, in model order (a LoRA stage's groups
        train only their adapters, but their layers count as trained).

    Example:
        >>> stage_trained_layers(model, Stage(1, train="block7"))  # block7, top_conv, head
        [<Conv2D name=block7a_expand_conv, ...>, ...]
    """
    granularity = granularity_of(model, stage.train)
    groups = LayerGroups.of(model)
    if stage.rank:  # the groups `add_stage_adapters` then trains
        groups_of = groups[FINE]
        names = adapter_groups(model, stage_targets(model, stage))
    else:
        groups_of = groups[granularity]
        ordered = list(groups_of)
        if stage.train == HEAD:
            names = [HEAD]
        elif stage.train == ALL:
            names = ordered
        else:
            names = ordered[ordered.index(stage.train) :]
    return [layer for name in names for layer in groups_of[name]]


def set_stage_trainable(model, stage: Stage) -> None:
    """Sets trainable flags as `stage.train` says (without recompiling).

    Args:
        model: a `TransferModel`.
        stage: the `Stage`.

    Example:
        >>> set_stage_trainable(model, Stage(3, train="block6"))
    """
    granularity = granularity_of(model, stage.train)
    if stage.rank:
        add_stage_adapters(model, stage)
    elif stage.train == HEAD:
        freeze(model, train_bn=stage.train_bn, recompile=False)
    elif stage.train == ALL:
        unfreeze(model, train_bn=stage.train_bn, recompile=False)
    else:
        freeze_to(
            model, stage.train, train_bn=stage.train_bn, granularity=granularity, recompile=False
        )


def _mixed(train, validation, stage: Stage, num_classes: int, seed: int):
    """Training batches mixed (soft labels); validation labels one-hot to match the loss."""
    # Sequential: the draws come from one seeded state, batch after batch.
    train = train.map(label_mixing(*stage.mixing, num_classes, seed=seed))
    return train, None if validation is None else validation.map(one_hot_labels(num_classes))


def _resized(dataset, size: int):
    """Training images resized to `size` x `size` (antialiased bilinear)."""
    import tensorflow as tf

    def resize(images, *rest):
        resized = tf.image.resize(images, (size, size), antialias=True)
        return (tf.cast(resized, images.dtype), *rest)

    return dataset.map(resize, num_parallel_calls=tf.data.AUTOTUNE)


def _augmented(dataset, augmentation):
    import tensorflow as tf

    def augment(inputs, *rest):
        return (augmentation(inputs, training=True), *rest)

    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)


class _ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping whose count and best weights carry across the `fit` calls
    of a resumed stage (Keras resets them in `on_train_begin`); it restores the
    best weights only at the end of the stage's last `fit` (`final`)."""

    def __init__(self, *, resume: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.final = True
        self._carry = None
        if resume is not None and resume.get("stopping") is not None:
            path = resume["path"].get("stopping")
            self._carry = (resume["stopping"], load_arrays(path) if path else None)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._carry is not None:
            state, self.best_weights = self._carry
            self.wait, self.best, self.best_epoch = (
                state["wait"],
                state["best"],
                state["best_epoch"],
            )

    def on_train_end(self, logs=None):
        self._carry = (self.resumable_state(), self.best_weights)
        if self.final:
            super().on_train_end(logs)

    def resumable_state(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {"wait": int(self.wait), "best": best, "best_epoch": int(self.best_epoch)}


class _RawWeightsKept(keras.callbacks.Callback):
    """For a `fit` that ends mid-stage: keeps the raw weights of the last epoch,
    which Keras replaces by the EMA averages when `fit` ends."""

    def on_epoch_end(self, epoch, logs=None):
        self._raw = [(v, keras.ops.copy(v.value)) for v in self.model.trainable_weights]

    def put_back(self) -> None:
        for variable, value in getattr(self, "_raw", []):
            variable.assign(value)


def _joined(first, second):
    if first is None:
        return second
    return extend_history(first, second.history, second.epoch)
