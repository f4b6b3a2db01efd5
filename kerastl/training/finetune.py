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
import math
import os
import time
import warnings
from collections.abc import Sequence

import keras

from kerastl._history import empty_history, extend_history
from kerastl._progress import resolve_verbose
from kerastl.data.augment import augmentation as augment_policy
from kerastl.data.augment import views_of
from kerastl.data.sampling import balanced_class_weights
from kerastl.distribute.resume import restore_seed_states, seed_states
from kerastl.distribute.strategies import is_chief
from kerastl.models import TransferModel
from kerastl.training import run_directory
from kerastl.training.calibration import Calibration
from kerastl.training.calibration import calibrate as calibrate_model
from kerastl.training.data_passes import DataPasses
from kerastl.training.evaluation import Evaluation
from kerastl.training.evaluation import evaluate as evaluate_model
from kerastl.training.feature_cache import FeatureStore
from kerastl.training.fit_data import check_fit_data
from kerastl.training.lora_stages import add_adapters
from kerastl.training.metrics import BalancedAccuracy
from kerastl.training.monitoring import check_monitor
from kerastl.training.resume_point import ResumePoint
from kerastl.training.stage import ALL, HEAD, Stage
from kerastl.training.stage_plan import PlannedStage, StagePlan, plan_stages
from kerastl.training.stage_run import StageRun
from kerastl.training.staged_backup import (
    InterruptSignals,
    RunFinished,
    RunInterrupted,
    StagedBackup,
    load_arrays,
    run_signature,
    signature_differences,
)
from kerastl.training.unfreezing import GradualUnfreezing

__all__ = ["FineTuner", "Stage", "fine_tune"]


class FineTuner:
    """Runs `Stage`s on a `TransferModel`, caching frozen layers' outputs.

    Args:
        model: a single-label classification `TransferModel` (built inside
            `strategy.scope()`); a `multilabel` or `regression` one is refused.
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
        callbacks: further Keras callbacks for every stage (not `GradualUnfreezing`:
            the stages say what trains).
        jit_compile: compile the training step with XLA (`compile(jit_compile=...)`).
        backup_share: with a backup (`fit(backup_dir=...)`, or a `run_dir`),
            the most of the training time epoch-end backups may take (0.03):
            short epochs are backed up every few epochs; stage ends and stops
            always are. None: every epoch (a stage's last one by its stage's
            backup, written as `fit` returns).
        calibrate: after `fit`, fit the softmax temperature of a single-label
            model on the validation data (`kerastl.calibrate`): probabilities,
            evaluations and exports are then calibrated; `tuner.calibration`
            holds what it changed.
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
        calibrate: bool = True,
        verbose: str | int = "auto",
    ):
        _check_arguments(model, callbacks, class_weight, backup_share)
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
        self.backup_share = backup_share
        self.calibrate = calibrate
        self.calibration: Calibration | None = None
        self.verbose = resolve_verbose(verbose)  # "auto": a bar on a terminal, else lines
        self._evaluated: list = []
        self.plan: StagePlan | None = None  # the last `fit`'s stages, resolved
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
            TypeError: `train` or `validation` is not a `tf.data.Dataset`.
            RunInterrupted: SIGTERM or Ctrl-C stopped the run, after a backup.
            RunFinished: the backup holds a finished run.
            ValueError: unbatched data, or the backup's run had other stages or
                settings (the differing keys named).
            BackupError: backups exist and none of them is whole.
        """
        check_fit_data(train, "train", self.model)
        check_fit_data(validation, "validation", self.model)
        monitor = self.monitor or ("val_loss" if validation is not None else "loss")
        check_monitor(monitor, self.metrics, validation=validation is not None)
        with self.strategy.scope():  # the cuts for the feature caches are models too
            self.plan = plan = plan_stages(
                self.model,
                stages,
                validation,
                caching=self.cache_features,
                cache_required=self._cache_required,
            )
        self._backup, point = self._open_backup(backup_dir, plan.settings, monitor)
        self.backup_seconds = 0.0
        if self.run_dir:
            os.makedirs(self.run_dir, exist_ok=True)
        self.recorder = run_directory.RunRecorder(self.model, self.run_dir, monitor)
        train = self.model.prepare_data(train)  # raw strings -> tokens; wrong inputs raise here
        validation = self.model.prepare_data(validation)
        augmented = train if self.augmentation is None else _augmented(train, self.augmentation)
        self._passes = self.features.passes = DataPasses(train, augmented)
        data = (train, augmented, validation, self._class_weight(train))
        history = empty_history()
        self.stage_starts, self.stage_summaries = [], []
        epoch = 0 if point is None else self._restore_run(point, history)
        with InterruptSignals(self._backup is not None) as self._signals, self._resume_hint():
            for planned in plan:
                if point is not None and planned.number - 1 < point.stage + point.stage_done:
                    continue  # trained before the interruption: its epochs are in the history
                resume = None if point is None else self._restore_model(point, plan)
                point = None
                epoch = self._run_stage(planned, epoch, resume, data, history)
        history.stage_starts = list(self.stage_starts)
        self._finish(monitor, history, epoch, validation)
        return history

    def _run_stage(self, planned: PlannedStage, epoch: int, resume, data, history) -> int:
        """Runs one stage (from `resume` inside it), records it; returns the epochs done."""
        first_epoch = epoch if resume is None else resume.stage_first_epoch
        if resume is None:
            self.stage_starts.append(epoch)
        self.recorder.stage = planned.label
        started = time.perf_counter()
        result = StageRun(self, planned, first_epoch, resume).run(*data)
        epoch = (first_epoch if resume is None else resume.epoch) + len(result.epoch)
        self.stage_summaries.append(
            {
                "stage": planned.label,
                "epochs": epoch - first_epoch,
                "lr": planned.stage.lr,
                "rates": planned.stage.rate_rule,
                "cached": planned.split.boundary if planned.split is not None else "no",
                "trainable": sum(math.prod(v.shape) for v in self.model.trainable_weights),
                "steps": int(data[0].cardinality()),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        extend_history(history, result.history, range(epoch - len(result.epoch), epoch))
        index = planned.number - 1
        self._save_backup(self._resume_point(index, first_epoch, epoch, 0, stage_done=True))
        return epoch

    def _finish(self, monitor: str, history, epoch: int, validation) -> None:
        """Warns without a best epoch, restores the best one, calibrates, marks the
        backup finished."""
        if self.recorder.best is None:
            warnings.warn(
                f"`monitor={monitor!r}` never appeared in the logs, so no best epoch was "
                f"kept. Logged: {sorted(history.history)}.",
                stacklevel=3,
            )
        restore = self.restore_best and monitor.startswith("val_")
        if restore and self.recorder.restore_best() and self.verbose:
            print(
                f"kerastl: restored epoch {self.recorder.best_epoch} "
                f"({monitor} = {self.recorder.best:.4f})."
            )
        self.calibration = None
        if self.calibrate and validation is not None and self.model.task == "classification":
            self.calibration = calibrate_model(self.model, validation)
        if self._backup is not None and is_chief(self.strategy):
            last = len(self.plan) - 1
            self._backup.finish(
                self._resume_point(last, epoch, epoch, 0, stage_done=True).to_state()
            )

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
        """The run's `StagedBackup` (or None) and the `ResumePoint` to resume (or None)."""
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
        point = ResumePoint.from_state(state)
        if point.finished:
            raise RunFinished(
                f"The run backed up in {backup.directory} finished ({point.epoch} epochs, "
                f"best epoch {point.best_epoch}): nothing to resume. Train again with "
                "another run directory or backup_dir, or move that folder aside."
            )
        differences = signature_differences(point.signature, self._signature)
        if differences:
            raise ValueError(
                f"The run backed up in {backup.directory} had other settings, so it cannot "
                f"be resumed with these: {'; '.join(differences)}. Resume with the same "
                "settings, or train again in another run directory."
            )
        if self.verbose:
            caches = (
                "; feature caches are computed again from the restored weights (cheaper "
                "than keeping them: deterministic)"
                if self.cache_features
                else ""
            )
            print(
                f"kerastl: resuming the run backed up in {backup.directory}: {point.where}{caches}."
            )
        return backup, point

    def _restore_run(self, point: ResumePoint, history) -> int:
        """Puts the backed-up history, best epoch and stage records back; returns
        the epochs done."""
        best = load_arrays(point.path["best"]) if "best" in point.path else None
        self.recorder.restore(point.history, point.best, point.best_epoch, best)
        for row in self.recorder.rows:
            logged = {key: [value] for key, value in row.items() if key not in ("epoch", "stage")}
            extend_history(history, logged, [row["epoch"] - 1])
        self.stage_starts = list(point.stage_starts)
        self.stage_summaries = [dict(summary) for summary in point.stage_summaries]
        return point.epoch

    def _restore_model(self, point: ResumePoint, plan: StagePlan) -> ResumePoint | None:
        """Loads the backed-up weights and seed states; returns the point when the
        stage in progress goes on (None when the backup is at a stage's end)."""
        with self.strategy.scope():  # the LoRA stages run so far added adapters
            for planned in plan[: point.stage + 1]:
                if planned.stage.rank:
                    stage = planned.stage
                    add_adapters(self.model, planned.target.adapted, stage.rank, stage.lora_alpha)
        for variable, value in zip(
            self.model.weights, load_arrays(point.path["model"]), strict=True
        ):
            variable.assign(value)
        restore_seed_states(self.model, point.seed_states)
        extracted_at = point.passes["extracted_at"]
        if point.stage_done:
            self._passes.resume(extracted_at, point.passes)
            return None
        self._passes.resume(extracted_at, point.stage_start_passes)
        return point

    def _save_backup(self, point: ResumePoint, *, fit_model=None, stopping=None) -> float:
        """Writes a backup of the run as it stands (see `staged_backup`); returns
        the seconds it took."""
        if self._backup is None or not is_chief(self.strategy):
            return 0.0
        started = time.perf_counter()
        arrays = {"best": self.recorder.best_weights}
        if stopping is not None:
            arrays["stopping"] = stopping.best_weights
        self._backup.save(
            point.to_state(), model=self.model, fit_model=fit_model or self.model, arrays=arrays
        )
        took = time.perf_counter() - started
        self.backup_seconds += took
        return took

    def _resume_point(
        self, index: int, first_epoch: int, epoch: int, step: int, *, stage_done: bool = False
    ) -> ResumePoint:
        """Where the run stands: stage `index`, `epoch` epochs and `step` batches done."""
        recorder = self.recorder
        return ResumePoint(
            signature=self._signature,
            stage=index,
            stage_done=stage_done,
            stage_first_epoch=first_epoch,
            epoch=epoch,
            step=step,
            history=recorder.rows,
            best=recorder.best,
            best_epoch=recorder.best_epoch,
            stage_starts=self.stage_starts,
            stage_summaries=self.stage_summaries,
            seed_states=seed_states(self.model),
            passes=self._passes.counts(),
        )

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

    def summary(
        self,
        seconds: float,
        *,
        report: str | None = None,
        test: Evaluation | None = None,
        saved_model: str | None = None,
    ) -> list[str]:
        """The run's closing lines, as `kerastl train` prints them: the best epoch,
        each stage's best, the temperature fitted, the backups' share, where the
        report and plots are, the test scores and the export.

        Args:
            seconds: the training time (for the lines' shares).
            report: the path `write_report` returned, or None.
            test: the test split's `Evaluation` (`evaluate`), or None.
            saved_model: the exported SavedModel's path, or None.

        Returns:
            The lines, without a prefix.

        Example:
            >>> for line in tuner.summary(seconds, report=report, test=test):
            ...     print(f"kerastl: {line}")
        """
        if self.recorder is None:
            raise ValueError("`summary` needs a FineTuner after `fit`.")
        recorder = self.recorder
        best = "n/a" if recorder.best is None else f"{recorder.best:.4f}"
        lines = [
            f"Best epoch {recorder.best_epoch}: {recorder.monitor} = {best} "
            f"({seconds:.0f}s training)",
            f"Best {recorder.monitor} per stage: {recorder.stage_gains()}",
        ]
        if self.calibration is not None:
            lines.append(f"Calibrated: {self.calibration.one_line()}")
        if self.backup_seconds:
            share = 100 * self.backup_seconds / max(seconds, 1e-9)
            lines.append(f"Backups: {self.backup_seconds:.1f}s ({share:.1f}% of training)")
        if report:
            plots = os.path.join(self.run_dir, "learning_curves.png")
            lines += [f"Report: {report}", f"Plots: {plots}, confusion_matrix.png"]
        if test is not None:
            lines.append(f"Test (once, best epoch's model): {test.plain.one_line()}")
            if test.tta is not None:  # mean probabilities over the test-time views
                lines.append(f"Test with TTA ({test.tta_name}): {test.tta.one_line()}")
        if saved_model:
            lines.append(f"SavedModel: {saved_model}")
        return lines

    def write_report(
        self,
        validation=None,
        *,
        title: str = "Fine-tuning run",
        extra_sections: tuple[str, ...] = (),
        save_model: bool = True,
        insight: bool = True,
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
            insight=insight,
            verbose=self.verbose,
        )


def _check_arguments(model, callbacks, class_weight, backup_share) -> None:
    """`FineTuner`'s refusals of a model, callbacks and settings it cannot run."""
    if not isinstance(model, TransferModel):
        raise TypeError(f"FineTuner needs a kerastl.TransferModel. Received: model={model!r}.")
    if model.task != "classification":
        raise ValueError(
            "FineTuner trains single-label classifiers (its stages' cross-entropy, "
            "accuracy, class weights, calibration and report). A "
            f"{model.task} TransferModel trains with Keras: `model.compile()` picks its "
            "task's loss and metrics, and `kerastl.freeze_to`, `group_optimizer` and "
            f"`fit_resumable` work on it. Received: task={model.task!r}."
        )
    if any(isinstance(callback, GradualUnfreezing) for callback in callbacks):
        raise ValueError(
            "`GradualUnfreezing` cannot run inside a FineTuner: its stages decide what "
            "trains (and cache what stays frozen). Unfreeze step by step with stages: "
            "`Stage(2, train='head')`, then a stage per group down "
            "(`kerastl.layer_groups(model)` lists them); `GradualUnfreezing` is for "
            f"`model.fit` and `kerastl.fit_resumable`. Received: callbacks={callbacks!r}."
        )
    if not (class_weight in (None, "balanced") or isinstance(class_weight, dict)):
        raise ValueError(
            "`class_weight` must be None, 'balanced' or a dict. "
            f"Received: class_weight={class_weight!r}."
        )
    if backup_share is not None and not 0 < backup_share <= 1:
        raise ValueError(
            f"`backup_share` must be in (0, 1] or None. Received: backup_share={backup_share!r}."
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


def _augmented(dataset, augmentation):
    import tensorflow as tf

    def augment(inputs, *rest):
        return (augmentation(inputs, training=True), *rest)

    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
