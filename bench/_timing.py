"""Timing shared by the benchmarks: interleaved calls (drift in machine load
hits every alternative alike because each round runs them all in turn), and
a callback timing each epoch of a Keras `fit`."""

from __future__ import annotations

import time
from collections.abc import Callable

import keras


def interleaved_times(
    runs: dict[str, Callable[[], object]], rounds: int, repeats: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each run: `rounds` rounds, each calling every run `repeats` times."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(rounds):
        for name, run in runs.items():
            for _ in range(repeats):
                started = time.perf_counter()
                run(round_)
                times[name].append(time.perf_counter() - started)
    return times


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of every epoch of a `fit` in `seconds`."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)
