"""Interleaved timing shared by the benchmarks: drift in machine load hits every
alternative alike because each round runs them all in turn."""

from __future__ import annotations

import time
from collections.abc import Callable


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
