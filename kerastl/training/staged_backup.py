"""Backups of a staged fine-tuning run, so that a killed run resumes where it stopped.

`FineTuner.fit(..., backup_dir=...)` writes a backup at the end of epochs
(as often as `FineTuner(backup_share=...)` of the training time allows;
`BackupCallback`), at the end of every stage (in place of its last epoch's:
the two would follow each other), and before the next batch after SIGTERM
or Ctrl-C. A backup is a generation of files, each written aside, fsynced and
renamed (`kerastl._atomic`), the state file last:

- `state-NNNNNN.json`: the stage in progress, epochs (and batches) done,
  history rows, the best epoch so far, seed-generator states, how many
  passes over the training data the run has made, and the SHA-256 of every
  file below;
- `model-NNNNNN.npz`: every variable of the model (trainable or not);
- `fit-NNNNNN.weights.h5`: the model that `fit` trains in the stage (the
  model, or a cached stage's upper part) with its optimizer: slots,
  iteration count, each group optimizer's own, and EMA averages;
- `best-NNNNNN.npz`: the best epoch's weights so far; `stopping-NNNNNN.npz`:
  early stopping's (with `patience`).

The two newest generations are kept. Loading takes the newest one whose
files are all present and match their digests, so a torn or truncated
backup falls back to the previous one; if backups exist and none is whole,
`BackupError` says so: a run is never silently restarted from scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import keras
import numpy as np

from kerastl._atomic import write_atomically, write_text

FORMAT = 1
_STATE = re.compile(r"^state-(\d{6})\.json$")
_OURS = re.compile(r"^[a-z]+-\d{6}\.(json|npz|weights\.h5)$")
KEEP = 2


class BackupError(RuntimeError):
    """Backups exist but none can be restored (named, with what is wrong)."""


class RunFinished(RuntimeError):
    """The backed-up run finished: there is nothing to resume."""


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


class StagedBackup:
    """A run's backup folder: write generations, read back the newest whole one.

    Args:
        directory: the folder (created on the first write).

    Example:
        >>> backup = StagedBackup("runs/elpv/backup")
        >>> state = backup.load()  # None when there is no backup yet
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._generation = max(self._generations(), default=0)

    def _generations(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_STATE.match(name) for name in os.listdir(self.directory))
        return sorted(int(match.group(1)) for match in found if match)

    def _state_path(self, generation: int) -> Path:
        return self.directory / f"state-{generation:06d}.json"

    def peek(self) -> dict | None:
        """The newest state file as written (files not checked), or None."""
        for generation in reversed(self._generations()):
            try:
                return json.loads(self._state_path(generation).read_text())
            except (OSError, ValueError):
                continue
        return None

    def load(self) -> dict | None:
        """The newest whole backup's state, or None when there is none.

        Returns:
            The state dict; `state["path"]` maps each file role (`model`,
            `fit`, `best`) to its path.

        Raises:
            BackupError: state files exist but none of them is whole (each
                problem named).
        """
        generations = self._generations()
        problems = []
        for generation in reversed(generations):
            path = self._state_path(generation)
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                problems.append(f"{path.name}: unreadable ({error})")
                continue
            broken = [
                name
                for name, digest in state.get("files", {}).items()
                if not (self.directory / name).is_file() or _digest(self.directory / name) != digest
            ]
            if broken or state.get("format") != FORMAT:
                problems.append(f"{path.name}: missing or damaged {broken or 'format'}")
                continue
            state["path"] = {
                role: str(self.directory / name) for role, name in state["roles"].items()
            }
            if problems:
                print(
                    f"kerastl: backup {path.name} used; newer ones are damaged: "
                    f"{'; '.join(problems)}."
                )
            return state
        if problems:
            raise BackupError(
                f"No backup in {self.directory} can be restored: {'; '.join(problems)}. "
                "Move the folder aside to start the run over."
            )
        return None

    def save(self, state: dict, *, model, fit_model, arrays: dict | None = None) -> None:
        """Writes one generation: the weights files, then the state naming them.

        Args:
            state: JSON-serializable run state (without `files`/`roles`).
            model: the whole model (all variables into `model-N.npz`).
            fit_model: the model `fit` trains in the stage, with its optimizer.
            arrays: further lists of arrays by role (`best`: the best epoch's
                weights; `stopping`: early stopping's best weights).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._generation += 1
        number = f"{self._generation:06d}"
        lists = {"model": [np.asarray(v) for v in model.weights], **(arrays or {})}
        roles = {
            role: f"{role}-{number}.npz" for role, values in lists.items() if values is not None
        }
        for role, name in roles.items():
            write_atomically(
                self.directory / name, lambda path, r=role: _save_arrays(path, lists[r])
            )
        roles["fit"] = f"fit-{number}.weights.h5"
        write_atomically(self.directory / roles["fit"], fit_model.save_weights)
        files = {name: _digest(self.directory / name) for name in roles.values()}
        record = {**state, "format": FORMAT, "roles": roles, "files": files}
        write_text(self._state_path(self._generation), json.dumps(record))
        self._prune()

    def finish(self, state: dict) -> None:
        """Marks the run finished: one state file remains, the weights files go
        (the run directory holds the trained model)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._generation += 1
        record = {**state, "finished": True, "format": FORMAT, "roles": {}, "files": {}}
        write_text(self._state_path(self._generation), json.dumps(record))
        for name in os.listdir(self.directory):
            if name != self._state_path(self._generation).name and _OURS.match(name):
                (self.directory / name).unlink(missing_ok=True)

    def _prune(self) -> None:
        """Keeps the newest `KEEP` states and the files they name."""
        generations = self._generations()
        kept = generations[-KEEP:]
        needed = set()
        for generation in kept:
            path = self._state_path(generation)
            try:
                needed |= set(json.loads(path.read_text())["files"])
            except (OSError, ValueError, KeyError):
                continue
        for generation in generations[:-KEEP]:
            self._state_path(generation).unlink(missing_ok=True)
        for name in os.listdir(self.directory):
            if _OURS.match(name) and not _STATE.match(name) and name not in needed:
                (self.directory / name).unlink(missing_ok=True)


def _save_arrays(path: str, arrays) -> None:
    with open(path, "wb") as file:
        np.savez(file, *arrays)


def load_arrays(path: str) -> list[np.ndarray]:
    """The arrays of a `model-N.npz` / `best-N.npz`, in order."""
    with np.load(path) as data:
        return [data[f"arr_{index}"] for index in range(len(data.files))]


class RunInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C stopped the run after backing it up (the message says how
    to resume)."""


class BackupCallback(keras.callbacks.Callback):
    """Backs the run up at every epoch's end but the stage's last, and before the
    next batch after a signal.

    Put it last (after `EmaWeights`, which puts the raw weights back at the
    epoch's end). `save(epoch, step)` writes the backup; `signals` is the
    `InterruptSignals` that says a stop was asked for.

    Args:
        save: `save(epoch, step)`: epochs done over the run, batches done in
            the next one; returns the seconds it took.
        signals: the run's `InterruptSignals`.
        passes: the run's `DataPasses`, told of each end-to-end epoch.
        end_to_end: whether this stage iterates the augmented training data.
        step_offset: batches of the first epoch skipped (a mid-epoch resume).
        stage_end: the epochs done over the run when the stage ends: that
            epoch's end, and one after which a callback stops training (early
            stopping, `TerminateOnNaN`: the stage ends there), are not backed
            up here, since the end-of-stage backup (`FineTuner`) follows as
            soon as `fit` returns. None: no such end.
        share: the most of the training time backups may take: an epoch's
            end is skipped while the training since the last backup is
            shorter than that backup's time / `share` (short epochs, such as
            a probe's on cached features, are backed up every few epochs);
            None: every epoch.
        clock: the time source (`time.perf_counter`).
    """

    def __init__(
        self,
        save,
        signals,
        passes,
        *,
        end_to_end: bool,
        step_offset: int = 0,
        stage_end: int | None = None,
        share: float | None = 0.03,
        clock=time.perf_counter,
    ):
        super().__init__()
        self._save = save
        self._signals = signals
        self._passes = passes
        self._end_to_end = end_to_end
        self._offset = step_offset
        self._stage_end = stage_end
        self._share = share
        self._clock = clock
        self._epoch = 0
        self._last_end = clock()
        self._last_took = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._end_to_end:
            self._passes.epoch_begun()

    def on_train_batch_begin(self, batch, logs=None):
        # Checked before a batch, not after one: Keras dispatches batch-end
        # callbacks asynchronously only when no callback defines one.
        if self._signals.asked:
            step = self._offset + batch
            self._save(self._epoch, step)
            raise RunInterrupted(f"{self._signals.asked} at epoch {self._epoch + 1}, batch {step}")

    def on_epoch_end(self, epoch, logs=None):
        self._offset = 0
        if self._end_to_end:
            self._passes.epoch_ended()
        if epoch + 1 == self._stage_end or (self.model is not None and self.model.stop_training):
            return  # the stage ends: its own backup follows
        trained = self._clock() - self._last_end
        if self._share is not None and trained * self._share < self._last_took:
            return
        self._last_took = self._save(epoch + 1, 0)
        self._last_end = self._clock()


class InterruptSignals:
    """SIGTERM and the first Ctrl-C ask for a stop at the next batch; a second
    Ctrl-C stops at once. Installed while a run with a backup trains (main
    thread only; `enabled=False`: Python's defaults stay).

    Example:
        >>> with InterruptSignals() as signals:
        ...     model.fit(data, callbacks=[BackupCallback(save, signals, passes, ...)])
    """

    def __init__(self, enabled: bool = True):
        self.asked: str | None = None
        self._enabled = enabled
        self._previous: dict = {}

    def __enter__(self):
        if self._enabled and threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number, frame):
        name = signal.Signals(number).name
        if self.asked and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.asked = name
        print(
            f"\nkerastl: {name}: backing up after this batch, then stopping "
            "(Ctrl-C again stops at once, without a backup).",
            flush=True,
        )


def run_signature(stages, **settings) -> dict:
    """What a resumed run must share with the backed-up one (JSON-serializable).

    Args:
        stages: the `Stage`s.
        **settings: further settings (monitor, metrics, ...), repr'd.

    Example:
        >>> run_signature(stages, monitor="val_loss")["monitor"]
        "'val_loss'"
    """
    return {
        "stages": [dataclasses.asdict(stage) for stage in stages],
        **{key: repr(value) for key, value in settings.items()},
    }


def signature_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`key: saved -> current` for each setting that differs.

    Example:
        >>> signature_differences({"stages": [{"lr": 1}]}, {"stages": [{"lr": 2}]})
        ['stages.0.lr: 1 -> 2']
    """
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = list(dict.fromkeys([*saved, *current]))
        return [
            line
            for key in keys
            for line in signature_differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        ]
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [
            line
            for index, (a, b) in enumerate(zip(saved, current, strict=True))
            for line in signature_differences(a, b, f"{prefix}{index}.")
        ]
    if saved != current:
        return [f"{prefix.rstrip('.')}: {saved!r} -> {current!r}"]
    return []
