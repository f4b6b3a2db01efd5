"""MultiWorkerMirroredStrategy: two worker processes on loopback, via TF_CONFIG."""

import json
import time

import numpy as np
import pytest
from processes import finish, wait_for, workers

SCRIPT = "multi_worker_training.py"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Both workers' final weights after an uninterrupted run, and its wall time."""
    root = tmp_path_factory.mktemp("multi_worker")
    start = time.monotonic()
    with workers(SCRIPT, str(root / "backup"), str(root / "weights")) as processes:
        outputs = finish(processes, deadline=start + 120)
    elapsed = time.monotonic() - start
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
        assert "resumed_from=(0, 0) iterations=18" in output, output[-3000:]
    return [np.load(root / f"weights-{task}.npy") for task in (0, 1)], elapsed


@pytest.mark.slow
def test_two_workers_train_and_end_with_identical_weights_within_two_minutes(uninterrupted):
    (first, second), elapsed = uninterrupted
    assert elapsed < 120
    np.testing.assert_array_equal(first, second)


@pytest.mark.slow
def test_killed_worker_restarted_with_the_same_command_resumes_from_the_backup(
    uninterrupted, tmp_path
):
    backup, prefix = tmp_path / "backup", tmp_path / "weights"
    state = backup / "state.json"

    def mid_training_backup():
        if not state.exists():
            return False
        saved = json.loads(state.read_text())
        return saved["epoch"] == 1 and saved["step"] > 0

    with workers(SCRIPT, str(backup), str(prefix), "0.5") as processes:
        wait_for(mid_training_backup, timeout=120, what="a backup in the middle of epoch 2")
        processes[1].kill()
        time.sleep(2)  # the survivor blocks in its next all-reduce: restart both
    saved = json.loads(state.read_text())
    assert saved["epoch"] == 1 and 0 < saved["step"] < 6
    assert not list(tmp_path.glob("weights-*.npy"))

    start = time.monotonic()
    with workers(SCRIPT, str(backup), str(prefix)) as processes:
        outputs = finish(processes, deadline=start + 120)
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
        assert f"resumed_from=(1, {saved['step']}) iterations=18" in output, output[-3000:]
    first, second = (np.load(tmp_path / f"weights-{task}.npy") for task in (0, 1))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, uninterrupted[0][0])
