"""`ResumePoint`: where a staged run stands, as its backup records it.

A `FineTuner` writes one with every backup (`staged_backup.StagedBackup`
stores it as the generation's JSON state) and reads one back to resume. The
JSON keys are the field names, so backups written before this class resume.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ResumePoint:
    """A staged run's position and bookkeeping at a backup.

    Args:
        signature: the settings a resumed run must share (`run_signature`).
        stage: the index of the stage in progress (from 0).
        stage_done: whether that stage ended (the next one has not begun).
        stage_first_epoch: the stage's first epoch over the run (from 0).
        epoch: epochs done over the run.
        step: batches done in the next epoch (a mid-epoch stop), else 0.
        history: the run recorder's rows so far.
        best: the best monitored value so far, or None.
        best_epoch: its epoch (from 1), or None.
        stage_starts: each begun stage's first epoch.
        stage_summaries: each ended stage's report row.
        seed_states: the model's seed-generator states.
        passes: the run's passes over its training data (`DataPasses.counts`).
        stage_start_passes: the passes when the stage in progress began.
        fit_start_passes: the passes when its `fit` began.
        stopping: early stopping's count and best value, or None.
        finished: whether the run ended.
        path: each backed-up file's path by role (`model`, `fit`, `best`,
            `stopping`), filled in by `StagedBackup.load`; not written.

    Example:
        >>> point = ResumePoint.from_state(StagedBackup("runs/a/backup").load())
        >>> point.epoch, point.step
        (7, 120)
    """

    signature: dict | None
    stage: int
    stage_done: bool
    stage_first_epoch: int
    epoch: int
    step: int
    history: list
    best: float | None
    best_epoch: int | None
    stage_starts: list
    stage_summaries: list
    seed_states: dict
    passes: dict
    stage_start_passes: dict | None = None
    fit_start_passes: dict | None = None
    stopping: dict | None = None
    finished: bool = False
    path: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_state(cls, state: dict) -> ResumePoint:
        """The point a backup's state (`StagedBackup.load`) records; keys that are
        not fields (the backup's own `format`, `roles`, `files`) are left out."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in state.items() if key in names})

    def to_state(self) -> dict:
        """The JSON-serializable state `StagedBackup.save` writes (no `path`)."""
        state = dataclasses.asdict(self)
        del state["path"]
        return state

    @property
    def where(self) -> str:
        """`epoch N` or `epoch N, after batch M`: where the run goes on (for messages)."""
        return f"epoch {self.epoch + 1}" + (f", after batch {self.step}" if self.step else "")
