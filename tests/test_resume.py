"""Resuming after a crash (`fit_resumable`)."""

import json

import numpy as np
import pytest
from _workload import CrashAfter, Crashed, resumable_run


@pytest.mark.slow
def test_a_run_crashed_mid_epoch_resumes_to_bit_identical_weights(tmp_path, deterministic_ops):
    """Crashed in epoch 2's fifth batch, after its third one's backup (every 3
    batches); the rerun resumes from there (a real SIGKILL: test_staged_resume)."""
    reference, history, model = resumable_run(tmp_path / "uninterrupted")
    assert history.resumed_from == (0, 0) and int(model.optimizer.iterations) == 24
    assert not (tmp_path / "uninterrupted").exists()  # removed once training completed

    backup = tmp_path / "backup"
    with pytest.raises(Crashed):
        resumable_run(backup, callbacks=[CrashAfter(8 + 5)])
    saved = json.loads((backup / "state.json").read_text())
    assert (saved["epoch"], saved["step"]) == (1, 3)

    weights, history, model = resumable_run(backup)
    assert history.resumed_from == (1, 3) and history.epoch == [1, 2]
    assert int(model.optimizer.iterations) == 24
    np.testing.assert_array_equal(weights, reference)
