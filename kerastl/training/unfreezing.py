"""Gradual unfreezing inside `fit`: one more layer group trains every few epochs."""

from __future__ import annotations

import keras

from kerastl._validation import check_positive_int
from kerastl.freezing import freeze_to, trainable_groups
from kerastl.groups import COARSE


class GradualUnfreezing(keras.callbacks.Callback):
    """Unfreezes the next group below the trainable ones every `every` epochs.

    Each step goes through `freeze_to`, which recompiles with a fresh
    optimizer built from the same config (a `group_optimizer` keeps its
    per-group rates) and carries over the optimizer state of the variables
    already training, so the head's Adam moments and step counts continue.
    The training function is rebuilt for the rest of `fit`.

    Args:
        every: epochs between two unfreezing steps (the first at epoch `every`).
        max_groups: stop once this many groups train (default: all).
        train_bn: see `set_trainable_groups`.
        granularity: the groups stepped through.
        verbose: print each step.

    Under `fit_resumable` a resumed run takes the steps the interrupted one took
    before its backup (`resume_at`) before the backup's optimizer state loads.

    Example:
        >>> kerastl.freeze(model)
        >>> model.fit(ds, epochs=6, callbacks=[kerastl.GradualUnfreezing(every=2)])
    """

    def __init__(
        self,
        every: int = 1,
        max_groups: int | None = None,
        train_bn: bool = False,
        granularity: str = COARSE,
        verbose: bool = True,
    ):
        super().__init__()
        check_positive_int("every", every)
        if max_groups is not None and max_groups < 1:
            raise ValueError(f"`max_groups` must be >= 1. Received: max_groups={max_groups}.")
        self.every = every
        self.max_groups = max_groups
        self.train_bn = train_bn
        self.granularity = granularity
        self.verbose = verbose
        self.history: list[tuple[int, list[str]]] = []
        self._resumed_in: int | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self._resumed_in:  # its step came before the backup resumed from
            self._resumed_in = None
            return
        self._step(epoch, announce=self.verbose)

    def resume_at(self, model: keras.Model, epoch: int, step: int) -> None:
        """Takes the steps a run took before its backup at `step` batches into
        `epoch` (0-based), so that what trains is what trained when the backup
        was written; that epoch's own step, if it had one, is not taken again.

        Args:
            model: the model, built and frozen as the interrupted run began.
            epoch: the epoch the backup is in.
            step: batches of it trained (0: the epoch had not begun).

        Example:
            >>> unfreezing.resume_at(model, epoch=3, step=40)  # fit_resumable does this
        """
        self.set_model(model)
        for earlier in range(1, epoch + (1 if step else 0)):
            self._step(earlier, announce=False)
        self._resumed_in = epoch if step else None
        if self.verbose and self.history:
            print(f"GradualUnfreezing: resumed in epoch {epoch + 1}; {self.history[-1][1]} train")

    def _step(self, epoch: int, announce: bool) -> None:
        if epoch == 0 or epoch % self.every:
            return
        states = list(trainable_groups(self.model, self.granularity).items())
        training = [i for i, (_, state) in enumerate(states) if state != "frozen"]
        first = min(training) if training else len(states)
        if first == 0 or (self.max_groups and len(states) - first >= self.max_groups):
            return
        trained = freeze_to(
            self.model, first - 1, train_bn=self.train_bn, granularity=self.granularity
        )
        self.model.make_train_function(force=True)
        self.history.append((epoch, trained))
        if announce:
            print(f"\nGradualUnfreezing: epoch {epoch + 1} trains {trained}")
