"""Group optimizers under tf.distribute.MirroredStrategy over 2 logical CPUs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_mirrored_training_with_a_group_optimizer_equals_one_device():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "mirrored_group_optimizer.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    match = re.search(r"max_abs_diff=(\S+) steps=(\d+),(\d+)", result.stdout)
    assert match, result.stdout + result.stderr[-2000:]
    assert float(match.group(1)) <= 1e-6
    assert match.group(2) == match.group(3) == "8"
