"""Why epochs of the same work take different times: each epoch's wall time beside
the CPU time the run got and the CPU time the hypervisor took (steal), Linux only.

    .venv/bin/python bench/cpu_steal.py -- .venv/bin/python recipes/image_classification.py

Runs the command, passes its output through with a timestamp on every line,
and samples `/proc/stat` (the machine's user and steal time) and the child's
CPU time (`/proc/PID/stat`, every thread) twice a second. An epoch ends at
each Keras epoch line (`50/50 - 21s - ...`). At the end it prints a row per
epoch: wall seconds, the run's CPU seconds, the seconds stolen from this
virtual machine's cores, the longest stretch in which the run got no CPU at
all, the machine's idle CPU seconds (idle and I/O wait), and the epoch's
wall time over the median of its stage's epochs. `--busy SECONDS` runs no
command: a single-threaded NumPy loop instead, printing every gap of more
than a second between two of its iterations (a stall that no program of
this machine causes shows there too). The
same work needs the same CPU time, so an epoch whose wall time grows while
its CPU time does not waited for CPU it did not get.
"""

from __future__ import annotations

import itertools
import os
import re
import statistics
import subprocess
import sys
import threading
import time

_EPOCH_START = re.compile(r"^Epoch (\d+)/(\d+)$")  # a stage's epochs share the total
_EPOCH_END = re.compile(r"^\s*(\d+)/\1 - \d+s - ")
_TICK = os.sysconf("SC_CLK_TCK")


def _machine_times() -> tuple[int, int, int]:
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    return fields[0] + fields[1], fields[7], fields[3] + fields[4]  # user, steal, idle + iowait


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime of all threads


def _sample(pid: int, samples: list, done: threading.Event) -> None:
    while not done.is_set():
        try:
            samples.append((time.time(), _process_cpu(pid), *_machine_times()))
        except OSError:
            return
        time.sleep(0.5)


def _between(samples: list, start: float, end: float) -> tuple[float, float, float, float]:
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return 0.0, 0.0, 0.0, 0.0
    cpu = inside[-1][1] - inside[0][1]
    steal = (inside[-1][3] - inside[0][3]) / _TICK
    idle = (inside[-1][4] - inside[0][4]) / _TICK
    longest = idle_since = 0.0
    for before, after in itertools.pairwise(inside):
        if after[1] - before[1] < 0.02:  # no CPU in this half second
            idle_since = idle_since or before[0]
            longest = max(longest, after[0] - idle_since)
        else:
            idle_since = 0.0
    return cpu, steal, idle, longest


def busy(seconds: float) -> int:
    """A CPU-bound loop without TensorFlow: prints each gap over 1 s between iterations."""
    import numpy as np

    matrix = np.random.default_rng(0).normal(size=(64, 64))
    end, last, gaps = time.time() + seconds, time.time(), []
    steal_before = _machine_times()[1]
    while (now := time.time()) < end:
        matrix = np.tanh(matrix @ matrix)  # ~0.1 ms
        if now - last > 1.0:
            gaps.append((last, now - last))
            print(f"{last:.1f}: no iteration for {now - last:.1f}s", flush=True)
        last = now
    stolen = (_machine_times()[1] - steal_before) / _TICK
    print(
        f"{len(gaps)} gaps over 1 s in {seconds:.0f}s, {sum(g for _, g in gaps):.1f}s in all; "
        f"machine steal {stolen:.1f} CPU-s"
    )
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--busy"] and len(argv) == 2:
        return busy(float(argv[1]))
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print(__doc__)
        return 2
    command = argv[argv.index("--") + 1 :]
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    samples: list = []
    done = threading.Event()
    sampler = threading.Thread(target=_sample, args=(child.pid, samples, done), daemon=True)
    sampler.start()
    epochs, stage, started = [], "", time.time()
    for line in child.stdout:
        now = time.time()
        print(f"{now:.1f} {line}", end="", flush=True)
        if match := _EPOCH_START.match(line.strip()):
            stage, started = f"of {match.group(2)}", now
        elif _EPOCH_END.match(line):
            epochs.append((stage, started, now))
    code = child.wait()
    done.set()
    sampler.join()
    columns = "epoch | stage's epochs | wall s | run CPU s | stolen CPU s | idle CPU s"
    print(f"\n| {columns} | longest no-CPU s | / median |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for number, (stage_of, start, end) in enumerate(epochs, start=1):
        walls = [e - s for st, s, e in epochs if st == stage_of]
        cpu, steal, idle, longest = _between(samples, start, end)
        ratio = (end - start) / statistics.median(walls)
        print(
            f"| {number} | {stage_of} | {end - start:.1f} | {cpu:.1f} | {steal:.1f} | "
            f"{idle:.1f} | {longest:.1f} | {ratio:.2f} |"
        )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
