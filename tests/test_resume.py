"""Resuming after a crash (`fit_resumable`) and stopping on NaN."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
from processes import SCRIPTS, run_script, script_env, wait_for


def _train(backup_dir, out, *extra):
    result = run_script("resumable_training.py", str(backup_dir), str(out), *extra, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_bit_identical_weights(tmp_path):
    reference = tmp_path / "reference.npy"
    assert "resumed_from=(0, 0) iterations=24" in _train(tmp_path / "uninterrupted", reference)
    assert not (tmp_path / "uninterrupted").exists()  # removed once training completed

    backup = tmp_path / "backup"
    state = backup / "state.json"

    def mid_epoch_backup():
        if not state.exists():
            return False
        saved = json.loads(state.read_text())
        return saved["epoch"] == 1 and saved["step"] == 3

    process = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPTS / "resumable_training.py"),
            str(backup),
            str(tmp_path / "x.npy"),
            "0.4",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=script_env(),
    )
    try:
        wait_for(mid_epoch_backup, timeout=180, what="a backup in the middle of epoch 2")
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert not (tmp_path / "x.npy").exists()

    resumed = tmp_path / "resumed.npy"
    output = _train(backup, resumed)
    assert "resumed_from=(1, 3) iterations=24 epochs=[1, 2]" in output
    np.testing.assert_array_equal(np.load(resumed), np.load(reference))
