"""Single and group optimizers under tf.distribute.MirroredStrategy over 2 logical CPUs."""

import re

import pytest
from processes import run_script


@pytest.mark.slow
def test_mirrored_epoch_equals_one_device_with_single_and_group_optimizers():
    result = run_script("mirrored_equivalence.py", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.findall(r"(single|group) max_abs_diff=(\S+) steps=(\d+),(\d+)", result.stdout)
    assert [label for label, *_ in found] == ["single", "group"], (
        result.stdout + result.stderr[-2000:]
    )
    for _, difference, steps_one, steps_two in found:
        assert float(difference) <= 1e-5
        assert steps_one == steps_two == "4"
