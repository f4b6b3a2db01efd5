"""Timing shared by the benchmarks: interleaved calls (drift in machine load
hits every alternative alike because each round runs them all in turn), and
a callback timing each epoch of a Keras `fit`."""

from __future__ import annotations

import os
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


def machine() -> str:
    """The CPU, in the terms that change these ratios: cores and vector width."""
    try:
        with open("/proc/cpuinfo") as file:
            info = file.read()
    except OSError:
        return f"{os.cpu_count()} cores"
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = fields.get("flags", "").split()
    vectors = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    family = f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
    name = fields.get("model name", "?")
    return f"{name} ({family}), {os.cpu_count()} cores, {vectors}"
