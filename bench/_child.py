"""One benchmark variant in a child process of its own, shared by `lora.py`
and `peer.py`: its peak RSS (from `wait4`) is its own."""

from __future__ import annotations

import json
import os
import subprocess


def run_child(command: list[str], result_path: str) -> tuple[dict | None, float, int]:
    """Runs `command`, which writes its row as JSON to `result_path`.

    Returns:
        `(row, peak RSS in GB, exit status)`; the row is None when the child failed.
    """
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    peak_gb = usage.ru_maxrss / 2**20
    if status != 0:
        return None, peak_gb, status
    with open(result_path) as file:
        return json.load(file), peak_gb, status
