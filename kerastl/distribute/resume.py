"""Training that survives being killed: rerun the same command and it resumes.

Keras's `BackupAndRestore` gets most of the way. What it lacks, added here:

- mid-epoch resume: Keras records the batch but restarts the epoch from its
  first batch, so the resumed run trains on those batches twice;
- atomic backups: Keras overwrites its files in place, so a kill during a
  save leaves a torn file (its `double_checkpoint` only keeps one spare);
- random state: dropout's seed generators are not in the weights file, so
  the resumed run draws other masks;
- a NaN guard: Keras saves the NaN weights at the end of the epoch that
  diverged, and deletes its backup when `TerminateOnNaN` ends training;
- multi-worker: only the chief writes; every worker restores the chief's
  backup (`backup_dir` must be on storage all workers see); BatchNorm
  moving statistics, which Keras 3 keeps per replica, are averaged across
  replicas before each backup and at the end, so all workers agree.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from kerastl._atomic import write_atomically, write_text
from kerastl._history import empty_history, extend_history, remaining_fits
from kerastl._internals import seed_generators, sublayers
from kerastl._validation import check_positive_int
from kerastl.distribute.replicas import sync_batch_norm_statistics
from kerastl.distribute.strategies import check_model_in_scope, is_chief

STATE_FILE = "state.json"


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that resumes mid-epoch, saves atomically and skips NaN.

    Use it through `fit_resumable`, which restores the backup, skips the
    batches already trained and plans the `fit` calls. The backup is a
    weights file (model and optimizer) plus `state.json` (epoch, batches done
    in it, seed generator states, the weights file's name), each written to
    a temporary file, fsynced and renamed, `state.json` last.

    Args:
        backup_dir: where the backup lives.
        save_freq: `"epoch"`, or a number of batches between backups (a
            backup is also written at the end of every epoch).

    Example:
        >>> backup = ResumableBackup("runs/a/backup", save_freq=50)
    """

    def __init__(self, backup_dir: str | os.PathLike, save_freq: str | int = "epoch"):
        if isinstance(save_freq, bool) or (isinstance(save_freq, int) and save_freq < 1):
            raise ValueError(
                "`save_freq` must be 'epoch' or a positive integer. "
                f"Received: save_freq={save_freq!r}."
            )
        super().__init__(
            os.fspath(backup_dir),
            save_freq=save_freq,
            delete_checkpoint=False,
            double_checkpoint=False,
        )
        self.step_offset = 0
        self.diverged = False
        self._epoch = 0
        self._steps_done = 0
        self._steps_at_last_save = 0

    @property
    def state_path(self) -> Path:
        return Path(self.backup_dir) / STATE_FILE

    def read_state(self) -> dict | None:
        """The saved state, or None when there is no backup yet."""
        if not self.state_path.exists():
            return None
        state = json.loads(self.state_path.read_text())
        if not (Path(self.backup_dir) / state["weights"]).exists():
            raise FileNotFoundError(
                f"Backup state {self.state_path} names {state['weights']}, which is missing. "
                "Delete the backup directory to start over."
            )
        return state

    def restore(self, model: keras.Model, callbacks: Sequence = ()) -> tuple[int, int]:
        """Loads the backup into `model` (weights, optimizer, seed generators).

        Args:
            model: the model, built as the interrupted run's was.
            callbacks: the run's callbacks; those that change what trains as
                training goes (`GradualUnfreezing`) define `resume_at(model,
                epoch, step)`, called first, so that the optimizer is built
                for the variables that trained when the backup was written.

        Returns:
            `(epoch, step)`: the epoch to continue and the batches of it already
            trained; `(0, 0)` without a backup.
        """
        state = self.read_state()
        if state is None:
            return 0, 0
        with model.distribute_strategy.scope():
            for callback in callbacks:
                if hasattr(callback, "resume_at"):
                    callback.resume_at(model, state["epoch"], state["step"])
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            model.load_weights(Path(self.backup_dir) / state["weights"])
            restore_seed_states(model, state["seed_states"])
        return state["epoch"], state["step"]

    def on_train_begin(self, logs=None):
        self._steps_at_last_save = self.step_offset

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._steps_done = self.step_offset

    def on_train_batch_end(self, batch, logs=None):
        self._steps_done = self.step_offset + batch + 1
        if not _finite_loss(logs):
            self.diverged = True
        elif self.save_freq != "epoch" and (
            self._steps_done - self._steps_at_last_save >= self.save_freq
        ):
            self._save(self._epoch, self._steps_done)

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0
        if _finite_loss(logs):
            self._save(epoch + 1, 0)

    def on_train_end(self, logs=None):
        """Keeps the backup: `fit_resumable` removes it once every epoch has run."""

    def _save(self, epoch: int, step: int) -> None:
        self._steps_at_last_save = step
        if self.diverged:
            return
        sync_batch_norm_statistics(self.model)
        if not _finite_weights(self.model):
            self.diverged = True
            return
        if not is_chief(self.model.distribute_strategy):
            return
        directory = Path(self.backup_dir)
        directory.mkdir(parents=True, exist_ok=True)
        previous = self.read_state()
        iterations = int(self.model.optimizer.iterations.numpy()) if self.model.optimizer else 0
        weights = f"weights-{iterations:09d}.weights.h5"
        write_atomically(directory / weights, self.model.save_weights)
        state = {
            "epoch": epoch,
            "step": step,
            "iterations": iterations,
            "weights": weights,
            "seed_states": seed_states(self.model),
        }
        write_text(self.state_path, json.dumps(state))
        if previous and previous["weights"] != weights:
            (directory / previous["weights"]).unlink(missing_ok=True)


def fit_resumable(
    model: keras.Model,
    data,
    *,
    epochs: int,
    backup_dir: str | os.PathLike,
    save_freq: str | int = "epoch",
    steps_per_epoch: int | None = None,
    validation_data=None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: str | int = "auto",
    keep_backup: bool = False,
) -> keras.callbacks.History:
    """`model.fit` that a rerun of the same command resumes where it was killed.

    The first call trains from scratch and backs up to `backup_dir`; after a
    crash, the same call restores weights, optimizer and seed generator
    states, skips the batches of the interrupted epoch already trained and
    continues, so the final weights equal those of an uninterrupted run
    (given deterministic data order and ops). A NaN loss stops training and
    the last good backup is kept. On success the backup is removed unless
    `keep_backup`.

    Resuming mid-epoch needs each epoch's batches in the same order: pass a
    dataset whose order does not change between iterations (no
    `reshuffle_each_iteration`), or a function `epoch -> dataset` that
    shuffles with a seed derived from the epoch.

    Args:
        model: a compiled model, built inside the scope of the strategy it trains under.
        data: a batched `tf.data.Dataset`, or a callable `epoch -> Dataset`.
        epochs: the total number of epochs.
        backup_dir: where backups live (shared storage for multi-worker runs).
        save_freq: `"epoch"`, or every N batches (plus every epoch end).
        steps_per_epoch: batches per epoch; needed when the dataset's length
            is unknown and a mid-epoch backup is resumed.
        validation_data: passed to `fit`.
        callbacks: further Keras callbacks. One that stops training (early
            stopping) at the end of the resumed epoch ends the run there, as it
            would have ended the uninterrupted one; Keras resets a callback's
            own state at each `fit`, so its count starts again on resuming.
            `GradualUnfreezing` resumes with the groups it had unfrozen
            (`ResumableBackup.restore`).
        verbose: passed to `fit`.
        keep_backup: keep the backup after training completes.

    Returns:
        A `History` over all epochs trained by this call; its `resumed_from`
        attribute is `(epoch, step)` of the backup it started from.

    Example:
        >>> history = kerastl.fit_resumable(model, train_ds, epochs=10,
        ...                                 backup_dir="runs/a/backup", save_freq=100)
    """
    check_positive_int("epochs", epochs)
    if not model.compiled:
        raise ValueError(f"Model {model.name!r} must be compiled before `fit_resumable`.")
    check_model_in_scope(model, model.distribute_strategy)
    epoch_data: Callable[[int], object] = data if callable(data) else (lambda _: data)
    backup = ResumableBackup(backup_dir, save_freq=save_freq)
    epoch, step = backup.restore(model, callbacks)
    history = empty_history()
    history.resumed_from = (epoch, step)
    if epoch >= epochs:
        print(
            f"Nothing to train: the backup in {backup.backup_dir} is at epoch {epoch} of {epochs}."
        )
    elif epoch or step:
        print(f"Resuming from {backup.backup_dir}: epoch {epoch + 1}, after {step} batches.")
    hooks = [backup, keras.callbacks.TerminateOnNaN(), *callbacks]

    def run(dataset, first_epoch, last_epoch, steps):
        result = model.fit(
            dataset,
            initial_epoch=first_epoch,
            epochs=last_epoch,
            steps_per_epoch=steps,
            validation_data=validation_data,
            callbacks=hooks,
            verbose=verbose,
            shuffle=False,
        )
        sync_batch_norm_statistics(model)
        extend_history(history, result.history, result.epoch)

    for skip, first, last in remaining_fits(epoch, epochs, step):
        if skip:  # the rest of the interrupted epoch
            dataset = epoch_data(first)
            total = steps_per_epoch or _known_length(dataset)
            if total is None:
                raise ValueError(
                    "Resuming mid-epoch needs the number of batches per epoch: the dataset's "
                    "length is unknown, so pass `steps_per_epoch`. Received: steps_per_epoch=None."
                )
            backup.step_offset = skip
            if skip < total:
                run(dataset.skip(skip), first, last, total - skip)
                if model.stop_training:  # a callback ended training with this epoch, as it
                    break  # would have ended an uninterrupted run's one `fit` (early stopping)
        elif not backup.diverged:
            if callable(data):
                stream = epoch_data(first)
                for later in range(first + 1, last):
                    stream = stream.concatenate(epoch_data(later))
                steps = steps_per_epoch or _known_length(epoch_data(first))
            else:
                stream, steps = data, steps_per_epoch
            run(stream, first, last, steps)
    if not backup.diverged and not keep_backup and is_chief(model.distribute_strategy):
        shutil.rmtree(backup.backup_dir, ignore_errors=True)
    return history


def _known_length(dataset) -> int | None:
    cardinality = int(dataset.cardinality())
    return cardinality if cardinality >= 0 else None


def _finite_loss(logs) -> bool:
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


def _finite_weights(model: keras.Model) -> bool:
    return all(
        np.isfinite(np.asarray(v)).all() for v in model.weights if v.dtype.startswith("float")
    )


def _seed_generators(model: keras.Model) -> dict:
    """State variables of every seed generator in the model, in the order of a
    walk of its layers, keyed `"3:block6d_drop"` (that order, the layer's name).
    Not by `layer.path`: Keras gives a layer it builds in its constructor
    (`Dropout`) no path, and every dropout of a model would share one key."""
    states = {}
    for layer in sublayers(model):
        for generator in seed_generators(layer):
            states[f"{len(states)}:{layer.name}"] = generator.state
    return states


def seed_states(model: keras.Model) -> dict:
    """Every seed generator's state in `model` (dropout masks, drop path), in
    the order of `_seed_generators`."""
    return {key: np.asarray(state).tolist() for key, state in _seed_generators(model).items()}


def restore_seed_states(model: keras.Model, states: dict) -> None:
    """Puts `seed_states` values back, generator by generator in walk order (a
    layer's automatic name may differ in a rerun). Warns, and restores none,
    when the backup holds another number of generators than the model."""
    generators = list(_seed_generators(model).values())
    if len(states) != len(generators):
        warnings.warn(
            f"The backup holds {len(states)} random-number states and the model has "
            f"{len(generators)} seed generators: none restored, so the resumed run's dropout "
            "masks differ from the interrupted run's (a backup from before kerastl kept "
            "every generator's state holds one).",
            stacklevel=2,
        )
        return
    for generator, value in zip(generators, states.values(), strict=True):
        generator.assign(np.asarray(value, dtype=generator.dtype))
