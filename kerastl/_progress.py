"""Progress of long work: a progress bar on a terminal, a line now and then in a log.

Keras's `verbose="auto"` draws a progress bar even when the output is a file
or a CI log (where its redraws become one long line per batch). kerastl
resolves `"auto"` itself: a progress bar (`1`) when standard output is a
terminal, one line per epoch (`2`) otherwise. Work that is not an epoch
(feature caching, test-time evaluation, the report, exports) reports
through `Progress`: the same bar on a terminal, and in a log a line at most
every `interval` seconds with the count, the time so far and the time left.
"""

from __future__ import annotations

import os
import sys
import time

import keras

AUTO = "auto"
_VALID = (0, 1, 2, AUTO)


def resolve_verbose(verbose: int | str, stream=None) -> int:
    """Keras's verbosity for `verbose`, with `"auto"` resolved by the output.

    Args:
        verbose: `0` (silent), `1` (progress bar), `2` (a line per epoch) or
            `"auto"`: `1` when `stream` is a terminal (or standard output in
            a Jupyter kernel or PyCharm, which redraw bars), else `2`.
        stream: the output (default: standard output).

    Returns:
        `0`, `1` or `2`.

    Example:
        >>> resolve_verbose("auto")  # under `python train.py > log.txt`
        2
    """
    if verbose not in _VALID or isinstance(verbose, bool):
        raise ValueError(f"`verbose` must be one of {_VALID}. Received: verbose={verbose!r}.")
    if verbose != AUTO:
        return int(verbose)
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    interactive = isatty is not None and isatty()
    notebook = "ipykernel" in sys.modules or "PYCHARM_HOSTED" in os.environ  # bars redraw there
    return 1 if interactive or (notebook and stream is sys.stdout) else 2


class Progress:
    """Counts steps of one piece of work and shows it as `verbose` says.

    Args:
        what: what is done, for the lines (`"caching block6"`).
        total: the number of steps, or None when unknown.
        verbose: as in `resolve_verbose`.
        unit: the step's name (`"batch"`, `"image"`).
        interval: in a log, the fewest seconds between two lines.
        announce: a line naming the work when it begins (off when the
            caller has said so already).

    Example:
        >>> progress = Progress("test split", 21, verbose=2)
        >>> for step, batch in enumerate(test_ds, start=1):
        ...     progress.update(step)
        >>> progress.finish()
        kerastl: test split (21 batches) ...
        kerastl: test split: 12/21 batches, 10s, ~8s left
        kerastl: test split: 21 batches in 17.3s
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        verbose: int | str = AUTO,
        *,
        unit: str = "batch",
        interval: float = 10.0,
        announce: bool = True,
    ):
        self.what = what
        self.total = total if total is not None and total > 0 else None
        self.mode = resolve_verbose(verbose)
        self.unit = unit
        self.interval = interval
        self.done = 0
        self._started = self._shown = time.perf_counter()
        self._bar = None
        if self.mode and announce:
            of = f" ({self.total} {self._units(self.total)})" if self.total else ""
            print(f"kerastl: {what}{of} ...", flush=True)
        if self.mode == 1:
            self._bar = keras.utils.Progbar(self.total, unit_name=unit)

    def update(self, done: int) -> None:
        """Records that `done` steps are finished."""
        self.done = done
        if self._bar is not None:
            self._bar.update(done)
        elif (
            self.mode == 2
            and done != self.total  # the closing line says it
            and time.perf_counter() - self._shown >= self.interval
        ):
            self._shown = time.perf_counter()
            elapsed = self._shown - self._started
            of = f"/{self.total}" if self.total else ""
            left = ""
            if self.total and done:
                left = f", ~{elapsed * (self.total - done) / done:.0f}s left"
            units = self._units(self.total or done)
            print(f"kerastl: {self.what}: {done}{of} {units}, {elapsed:.0f}s{left}", flush=True)

    def finish(self) -> float:
        """Ends the work: the bar's last step, or one closing line in a log.

        Returns:
            The seconds since the work began.
        """
        seconds = time.perf_counter() - self._started
        if self._bar is not None:
            self._bar.update(self.done, finalize=True)
        elif self.mode == 2:
            print(
                f"kerastl: {self.what}: {self.done} {self._units(self.done)} in {seconds:.1f}s",
                flush=True,
            )
        return seconds

    def _units(self, count: int) -> str:
        if count == 1:
            return self.unit
        return self.unit + ("es" if self.unit.endswith(("ch", "sh", "s", "x")) else "s")
