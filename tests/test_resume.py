"""Resuming after a crash (`fit_resumable`)."""

import json

import numpy as np
import pytest
from _workload import CrashAfter, Crashed, StopAfterEpoch, resumable_run


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


def test_a_callback_that_stops_the_resumed_epoch_ends_the_run_there(tmp_path, deterministic_ops):
    """A user's callback stops training at the end of epoch 2; the run crashed in
    it resumes from its batch-3 backup, and ends with that epoch, as the
    uninterrupted run did, instead of going on to epoch 3."""
    reference, history, _ = resumable_run(tmp_path / "uninterrupted", [StopAfterEpoch(1)])
    assert history.epoch == [0, 1]
    backup = tmp_path / "backup"
    with pytest.raises(Crashed):
        resumable_run(backup, callbacks=[StopAfterEpoch(1), CrashAfter(8 + 5)])
    weights, history, model = resumable_run(backup, callbacks=[StopAfterEpoch(1)])
    assert history.resumed_from == (1, 3) and history.epoch == [1]
    assert int(model.optimizer.iterations) == 16
    np.testing.assert_array_equal(weights, reference)
    assert not backup.exists()  # the run ended: its backup removed, as an uninterrupted one's
