"""`StageRun`: one stage of a `FineTuner.fit`, from its plan to its trained model.

A run prepares the model as the stage's plan says (trainable flags, LoRA
adapters, head dropout, drop path), compiles the model, or the upper part
cut off for its feature cache, with the stage's optimizer and loss, builds
the stage's training data (cached features, resized or mixed images), fits,
and leaves the model holding the optimizer it trained with. Given a
`ResumePoint` inside the stage, it loads the optimizer's state, replays the
data passes the interrupted run made and fits the rest of the interrupted
epoch, then the stage's other epochs.
"""

from __future__ import annotations

import os

import keras

from kerastl._history import empty_history, extend_history, remaining_fits
from kerastl.data.augment import label_mixing, one_hot_labels
from kerastl.training.drop_path import reset_drop_path
from kerastl.training.ema import EmaWeights
from kerastl.training.resume_point import ResumePoint
from kerastl.training.stage_compile import stage_loss, stage_optimizer
from kerastl.training.stage_plan import EVERY_LAYER, PlannedStage
from kerastl.training.staged_backup import BackupCallback, load_arrays


class StageRun:
    """One stage of a `FineTuner`'s run.

    Args:
        tuner: the `FineTuner` (its model, strategy, recorder, feature store,
            data passes and backup).
        planned: the stage, planned (`kerastl.training.stage_plan`).
        first_epoch: the stage's first epoch over the run (from 0).
        resume: where the interrupted run stopped inside this stage, or None.

    Example:
        >>> history = StageRun(tuner, plan[0], first_epoch=0).run(train, train, val, None)
    """

    def __init__(self, tuner, planned: PlannedStage, first_epoch: int, resume=None):
        self.tuner = tuner
        self.planned = planned
        self.stage = planned.stage
        self.model = tuner.model
        self.first_epoch = first_epoch
        self.resume: ResumePoint | None = resume
        self.done = 0 if resume is None else resume.epoch - first_epoch  # epochs trained before
        self.fit_model = self.model  # the model `fit` trains: the model, or its cached upper part
        self.stopping: _ResumableEarlyStopping | None = None
        self.passes_at: dict = {}

    def run(self, train, augmented, validation, class_weight) -> keras.callbacks.History:
        """Trains the stage (the rest of it, when resuming).

        Args:
            train: the run's training data (what caches are computed from).
            augmented: the same, augmented (what end-to-end stages train on).
            validation: the validation data, or None.
            class_weight: passed to `fit`.

        Returns:
            The stage's `History` (the epochs trained by this call).
        """
        tuner, resume = self.tuner, self.resume
        with tuner.strategy.scope():
            self._prepare()
            self._compile(int(train.cardinality()) * self.stage.epochs)
        passes = tuner._passes
        stage_start = passes.expected() if resume is None else resume.stage_start_passes
        augmented, validation = self._stage_data(train, augmented, validation)
        passes.catch_up(None if resume is None else resume.fit_start_passes)
        fit_start = passes.counts() if resume is None else resume.fit_start_passes
        if self.planned.split is None:
            for _ in range(self.done):  # the epochs trained before the interruption, data only
                passes.replay_epoch(augmented)
        self.passes_at = {"stage_start_passes": stage_start, "fit_start_passes": fit_start}
        try:
            result = self._fit(augmented, validation, self._callbacks(), class_weight)
        finally:
            reset_drop_path(self.model)
        if self.fit_model is not self.model:
            # The shared upper layers trained under the trainer's optimizer: make it
            # the model's, so `model.optimizer` and a saved model hold its state.
            with tuner.strategy.scope():
                self._compile_model(self.model, self.fit_model.optimizer)
        return result

    def _prepare(self) -> None:
        """Flags, adapters, dropout and drop path; the model to fit."""
        tuner, planned, model = self.tuner, self.planned, self.model
        weights_before = model.weights
        planned.prepare(model)
        if len(model.weights) != len(weights_before):  # a LoRA stage added adapters
            tuner.recorder.weights_added(weights_before)
        if planned.resized:
            self.fit_model = model.at_any_image_size()
        elif planned.split is not None:
            self.fit_model = planned.split.trainer
        reason = planned.end_to_end
        if tuner.cache_features and reason and reason != EVERY_LAYER and tuner.verbose:
            print(f"kerastl: not caching: {reason}" + ("" if reason.endswith(".") else "."))

    def _compile(self, steps: int) -> None:
        self._compile_model(self.fit_model, stage_optimizer(self.stage, self.model, steps))
        if self.resume is not None:  # the optimizer's state as backed up
            self.fit_model.optimizer.build(self.fit_model.trainable_variables)
            self.fit_model.load_weights(self.resume.path["fit"])

    def _compile_model(self, model: keras.Model, optimizer) -> None:
        tuner = self.tuner
        model.compile(
            optimizer,
            stage_loss(self.stage),
            metrics=tuner._metric_objects(),
            jit_compile=tuner.jit_compile,
        )

    def _stage_data(self, train, augmented, validation):
        """The stage's training and validation batches: cached features, or the
        inputs resized or mixed as the stage says."""
        planned, verbose = self.planned, self.tuner.verbose
        split = planned.split
        if split is not None:
            if split.note and verbose:
                print(f"kerastl: caching {split.boundary}: {split.note}.")
            augmented, validation = self.tuner.features.datasets(
                split, train, validation, source=planned.source, skip_epochs=self.done
            )
        if planned.resized:
            augmented = _resized(augmented, self.stage.image_size)
        if self.stage.mixing:
            augmented, validation = _mixed(
                augmented, validation, self.stage, self.model.num_classes, seed=self.first_epoch
            )
        return augmented, validation

    def _callbacks(self) -> list:
        tuner = self.tuner
        callbacks = [tuner.recorder, *tuner.callbacks]
        if self.stage.patience:
            self.stopping = _ResumableEarlyStopping(
                patience=self.stage.patience, restore_best_weights=True, resume=self.resume
            )
            callbacks.append(self.stopping)
        if tuner.run_dir:
            callbacks.append(
                keras.callbacks.TensorBoard(os.path.join(tuner.run_dir, "logs"), write_graph=False)
            )
        if self.stage.ema is not None:
            callbacks.append(EmaWeights())  # the others see the averaged weights
        if tuner._backup is not None:  # last: it backs up what the others leave
            callbacks.append(
                BackupCallback(
                    self._save,
                    tuner._signals,
                    tuner._passes,
                    end_to_end=self.planned.split is None,
                    step_offset=0 if self.resume is None else self.resume.step,
                    stage_end=self.first_epoch + self.stage.epochs,
                    share=tuner.backup_share,
                )
            )
        return callbacks

    def _save(self, epoch: int, step: int) -> float:
        """A backup inside the stage; returns the seconds it took."""
        point = self.tuner._resume_point(self.planned.number - 1, self.first_epoch, epoch, step)
        point.stopping = None if self.stopping is None else self.stopping.resumable_state()
        for key, value in self.passes_at.items():
            setattr(point, key, value)
        return self.tuner._save_backup(point, fit_model=self.fit_model, stopping=self.stopping)

    def _fit(self, data, validation, callbacks, class_weight) -> keras.callbacks.History:
        """The stage's epochs (what is left of them): one `fit`, or two after a
        mid-epoch stop (the rest of that epoch, then the others).

        A callback that stops the first of two (early stopping, or a user's
        `TerminateOnNaN`) ends the stage there, as it ends the one `fit` of an
        uninterrupted run: the second is not run, and that first `fit` ends as
        a stage's last does (best weights restored, EMA averages written in).
        """
        step = 0 if self.resume is None else self.resume.step
        fits = remaining_fits(
            self.first_epoch + self.done, self.first_epoch + self.stage.epochs, step
        )
        result = None
        for number, (skip, initial, last) in enumerate(fits, start=1):
            final = number == len(fits)
            if self.stopping is not None:
                self.stopping.final = final
            keep_raw = [] if final else [_RawWeightsKept()]  # Keras writes EMA in at the end
            part = self.fit_model.fit(
                data.skip(skip) if skip else data,
                validation_data=validation,
                initial_epoch=initial,
                epochs=last,
                callbacks=callbacks + keep_raw,
                class_weight=class_weight,
                shuffle=False,  # the pipeline shuffles (Keras ignores it, and warns)
                verbose=self.tuner.verbose,
            )
            stopped = self.fit_model.stop_training  # Keras clears it as `fit` begins
            if not stopped:
                for kept in keep_raw:
                    kept.put_back()
            result = part if result is None else extend_history(result, part.history, part.epoch)
            if stopped:
                break
        return result or empty_history()


def _mixed(train, validation, stage, num_classes: int, seed: int):
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


class _ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping whose count and best weights carry across the `fit` calls
    of a resumed stage (Keras resets them in `on_train_begin`); it restores the
    best weights only at the end of the stage's last `fit` (`final`, or a `fit`
    that a callback stopped: the stage ends with it)."""

    def __init__(self, *, resume: ResumePoint | None = None, **kwargs):
        super().__init__(**kwargs)
        self.final = True
        self._carry = None
        if resume is not None and resume.stopping is not None:
            path = resume.path.get("stopping")
            self._carry = (resume.stopping, load_arrays(path) if path else None)

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
        if self.final or self.model.stop_training:
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
