"""A staged FineTuner run that is killed resumes where it stopped (`backup_dir`)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from _workload import (
    CrashAfter,
    Crashed,
    SigtermAfter,
    StopAfterEpoch,
    op_determinism,
    staged_run,
)
from processes import SCRIPTS, script_env, wait_for

import kerastl
from kerastl.training.data_passes import KERAS_SPARE_ITERATORS
from kerastl.training.staged_backup import (
    BackupError,
    RunFinished,
    RunInterrupted,
    StagedBackup,
    signature_differences,
)


def _newest_state(backup):
    state = None
    for path in sorted(backup.glob("state-*.json")):
        try:
            state = json.loads(path.read_text())
        except ValueError:  # being written
            continue
    return state


def _run_to_end(backup):
    """`staged_training.py`'s run, in this process: from the start, or resumed
    from what a killed child left in `backup`. Under op determinism, as the
    child runs, so an uninterrupted run and a resumed one compare bit for bit."""
    keras.backend.clear_session()
    with op_determinism():
        return staged_run(backup)


def _start(backup, out, *extra, **env):
    return subprocess.Popen(
        [sys.executable, "-u", str(SCRIPTS / "staged_training.py"), str(backup), str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(**env),
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: weights and history."""
    return _run_to_end(tmp_path_factory.mktemp("reference") / "backup")


def _progress(path) -> int | None:
    """The epoch of the training batch that last ended (`Pause`'s progress file)."""
    return int(path.read_text().split()[0]) if path.exists() else None


def _in_stage_two(epoch):
    def ready(backup):
        state = _newest_state(backup)
        return bool(state) and state["stage"] == 1 and state["epoch"] == epoch
        # (stage 1 trains epochs 0-1; stage 2 epochs 2-5)

    return ready


@pytest.mark.slow
def test_a_run_killed_in_stage_two_resumes_to_bit_identical_weights_and_history(
    tmp_path, reference
):
    """SIGKILL after stage 2's second epoch is backed up; the rerun's weights and history."""
    backup = tmp_path / "backup"
    process = _start(backup, tmp_path / "killed", "0.3")
    try:
        wait_for(lambda: _in_stage_two(3)(backup), timeout=180, what="a backup after epoch 4")
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    weights, history = _run_to_end(backup)
    np.testing.assert_array_equal(weights, reference[0])
    assert history == reference[1]


BATCHES = 6  # per epoch: 48 training images in batches of 8


@pytest.mark.slow
def test_a_run_crashed_in_a_lora_stage_resumes_to_bit_identical_weights_and_history(
    tmp_path, deterministic_ops
):
    """Stage 2 adds adapters to Lite0's block6-top_conv and trains them on the
    cached block6 input: the resumed run adds them before its weights load.
    Crashed in the fifth epoch (stage 2's third), after the fourth one's backup."""
    reference = staged_run(tmp_path / "reference", lora=True)
    keras.backend.clear_session()
    with pytest.raises(Crashed):
        staged_run(tmp_path / "backup", lora=True, callbacks=(CrashAfter(4 * BATCHES + 2),))
    assert _newest_state(tmp_path / "backup")["epoch"] == 4  # epochs 0-3 done
    keras.backend.clear_session()
    weights, history = staged_run(tmp_path / "backup", lora=True)
    np.testing.assert_array_equal(weights, reference[0])
    assert history == reference[1]


@pytest.mark.slow
def test_a_run_crashed_while_caching_starts_over_and_ends_the_same(
    tmp_path, capsys, deterministic_ops, reference
):
    """No backup exists before the first epoch ends: the rerun trains from the
    start (and says nothing of resuming), ending where an uninterrupted run ends."""
    drawn = []

    def crash_while_caching(images, labels):
        drawn.append(len(images))
        if len(drawn) == BATCHES + 3:  # pass 1 counts the labels (class weights); pass 2 caches
            raise Crashed
        return images, labels

    keras.backend.clear_session()
    capsys.readouterr()
    with pytest.raises(tf.errors.OpError, match="Crashed"):
        staged_run(tmp_path / "backup", verbose=1, data_hook=crash_while_caching)
    assert "caching pooled features" in capsys.readouterr().out
    assert _newest_state(tmp_path / "backup") is None
    keras.backend.clear_session()
    weights, history = staged_run(tmp_path / "backup", verbose=1)
    assert "resuming" not in capsys.readouterr().out
    np.testing.assert_array_equal(weights, reference[0])
    assert history == reference[1]


@pytest.mark.slow
def test_sigterm_backs_up_at_the_next_batch_and_the_run_resumes(tmp_path, reference):
    backup = tmp_path / "backup"
    progress = tmp_path / "stopped.progress"
    process = _start(backup, tmp_path / "stopped", "0.3")
    try:
        wait_for(lambda: _in_stage_two(4)(backup), timeout=180, what="a backup after epoch 4")
        # A batch of epoch 5 has ended (waiting a fixed time instead was not
        # always enough beside the other test worker).
        wait_for(lambda: _progress(progress) == 4, timeout=60, what="a batch of epoch 5")
        asked = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        took = time.monotonic() - asked
    finally:
        process.kill()
        process.wait()
    assert process.returncode != 0
    assert "stopped by SIGTERM at epoch 5, batch" in err and "Resume by running it again" in err
    assert took < 5  # one batch (0.3 s) and a backup, not the rest of the epoch
    state = _newest_state(backup)
    assert state["epoch"] == 4 and state["step"] > 0
    weights, history = _run_to_end(backup)
    np.testing.assert_array_equal(weights, reference[0])
    # The resumed epoch's training metrics average the batches after the stop
    # (so they differ: the run resumed mid-epoch rather than starting over).
    for key in ("val_loss", "val_accuracy"):
        assert history["history"][key] == reference[1]["history"][key]
    loss, expected = history["history"]["loss"], reference[1]["history"]["loss"]
    assert loss[:4] == expected[:4] and loss[4] != expected[4] and loss[5] == expected[5]


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"patience": 1}, id="early stopping"),
        pytest.param({"callbacks": (StopAfterEpoch(3),)}, id="a callback"),
    ],
)
@pytest.mark.slow
def test_a_stop_in_the_epoch_a_run_resumed_mid_way_ends_the_stage_as_it_would_have(
    tmp_path, deterministic_ops, settings
):
    """SIGTERM in the epoch at whose end the stage stops (stage 2's second with
    these numbers): the resumed run's first `fit` (the rest of that epoch) must
    end the stage as the uninterrupted run's one `fit` did, not go on to the
    stage's last epoch, and end it the same way (early stopping's best weights,
    the EMA averages)."""
    # Outside the main thread the run installs no handler and SIGTERM would end pytest.
    assert threading.current_thread() is threading.main_thread()
    reference = staged_run(tmp_path / "reference", **settings)
    epochs = len(reference[1]["history"]["loss"])
    assert epochs < 6, "the stage must stop before its last epoch"  # 4 here
    keras.backend.clear_session()
    stopping = (*settings.get("callbacks", ()), SigtermAfter((epochs - 1) * BATCHES + 2))
    with pytest.raises(RunInterrupted, match=f"SIGTERM at epoch {epochs}, batch 2"):
        staged_run(tmp_path / "backup", **{**settings, "callbacks": stopping})
    assert _newest_state(tmp_path / "backup")["epoch"] == epochs - 1
    keras.backend.clear_session()
    weights, history = staged_run(tmp_path / "backup", **settings)
    np.testing.assert_array_equal(weights, reference[0])
    assert history["best_epoch"] == reference[1]["best_epoch"]
    for key in ("val_loss", "val_accuracy"):
        assert history["history"][key] == reference[1]["history"][key]
    # The resumed epoch's training metrics average the batches after the stop (see above).
    assert history["history"]["loss"][:-1] == reference[1]["history"]["loss"][:-1]
    assert len(history["history"]["loss"]) == epochs


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    backbone = keras.Model(inputs, keras.layers.ReLU()(x), name="tiny")
    return kerastl.TransferModel(backbone, 3, preprocessing="tf")


def _data(count=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (count, 16, 16, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 3, count))).batch(8)


class _Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("crash")


STAGES = [kerastl.Stage(2, lr=1e-2), kerastl.Stage(2, train="all", lr=1e-3)]


def _interrupted(backup):
    tuner = kerastl.FineTuner(_model(), callbacks=(_Crash(),), backup_share=None, verbose=0)
    with pytest.raises(RuntimeError, match="crash"):
        tuner.fit(_data(), _data(8, seed=1), stages=STAGES, backup_dir=backup)


def test_resuming_with_other_stages_is_refused_naming_the_keys(tmp_path):
    _interrupted(tmp_path)
    changed = [STAGES[0], kerastl.Stage(2, train="all", lr=2e-3)]
    with pytest.raises(ValueError, match=r"stages\.1\.lr: 0\.001 -> 0\.002"):
        kerastl.FineTuner(_model(), verbose=0).fit(
            _data(), _data(8, seed=1), stages=changed, backup_dir=tmp_path
        )


def test_a_finished_run_says_so_and_keeps_no_weights_in_its_backup(tmp_path):
    tuner = kerastl.FineTuner(_model(), backup_share=None, verbose=0)
    tuner.fit(_data(), _data(8, seed=1), stages=STAGES, backup_dir=tmp_path)
    (only,) = os.listdir(tmp_path)  # the state file: no weights, no older backups
    # Backups after epochs 1 and 3, each stage's at its end (epochs 2 and 4: not
    # also their epochs' own), then the finish: the fifth state file.
    assert only == "state-000005.json" and json.loads((tmp_path / only).read_text())["finished"]
    with pytest.raises(RunFinished, match=r"finished \(4 epochs, best epoch \d\): nothing"):
        kerastl.FineTuner(_model(), verbose=0).fit(
            _data(), _data(8, seed=1), stages=STAGES, backup_dir=tmp_path
        )


def test_a_damaged_backup_falls_back_to_the_one_before_or_is_refused(tmp_path, capsys):
    _interrupted(tmp_path)
    newest = _newest_state(tmp_path)
    model_file = tmp_path / newest["roles"]["model"]
    model_file.write_bytes(model_file.read_bytes()[:100])  # torn by a crash
    state = StagedBackup(tmp_path).load()
    assert state["epoch"] == newest["epoch"] - 1 or state["stage_done"] != newest["stage_done"]
    assert "newer ones are damaged" in capsys.readouterr().out
    resumed = kerastl.FineTuner(_model(), verbose=0)
    history = resumed.fit(_data(), _data(8, seed=1), stages=STAGES, backup_dir=tmp_path)
    assert history.epoch == [0, 1, 2, 3]
    for path in tmp_path.glob("state-*.json"):
        path.write_text(path.read_text()[:20])
    with pytest.raises(BackupError, match=r"No backup in .* can be restored: state-\d+\.json"):
        StagedBackup(tmp_path).load()


def test_signature_differences_name_each_changed_key():
    saved = {"stages": [{"lr": 0.1, "epochs": 2}], "monitor": "'val_loss'"}
    current = {"stages": [{"lr": 0.2, "epochs": 2}], "monitor": "'val_accuracy'"}
    assert signature_differences(saved, current) == [
        "stages.0.lr: 0.1 -> 0.2",
        "monitor: \"'val_loss'\" -> \"'val_accuracy'\"",
    ]
    assert signature_differences({"stages": [1]}, {"stages": [1, 2]}) == ["stages: [1] -> [1, 2]"]


def test_keras_fit_creates_a_spare_iterator_at_each_epochs_end():
    """Keras 3.15's `EpochIterator` makes the next epoch's iterator when an epoch's
    last batch is drawn, drops it, and makes another when the next epoch begins:
    each trained epoch advances a reshuffling `shuffle` by 1 + KERAS_SPARE_ITERATORS
    orders. `DataPasses` replays that on resume; this fails when Keras changes."""

    def orders(fit_epochs, drains):
        keras.utils.set_random_seed(0)
        firsts = []

        def note(x):
            firsts.append(int(x[0]))
            return x

        values = np.arange(32, dtype="float32")
        data = tf.data.Dataset.from_tensor_slices((values, values)).shuffle(32, seed=7).batch(8)
        data = data.map(
            lambda a, b: (tf.ensure_shape(tf.numpy_function(note, [a], tf.float32), [None]), b)
        )
        model = keras.Sequential(
            [keras.Input(()), keras.layers.Reshape((1,)), keras.layers.Dense(1)]
        )
        model.compile("sgd", "mse")
        if fit_epochs:
            model.fit(data, epochs=fit_epochs, verbose=0)
        for _ in range(drains):
            for _ in data:
                pass
        return firsts[::4]  # the first element of each pass (4 batches)

    plain = orders(0, 6)
    fitted = orders(3, 0)
    step = 1 + KERAS_SPARE_ITERATORS
    assert fitted == plain[::step][:3]
    assert len(set(plain)) > 3  # the orders do change between passes


def test_epoch_backups_keep_within_their_share_of_training_time():
    """A 1 s backup with share 0.1 waits for 10 s of training; stops always back up;
    a stage's last epoch is backed up by the stage."""
    from kerastl.training.staged_backup import BackupCallback, InterruptSignals

    now, saved = [0.0], []

    def save(epoch, step):
        saved.append((epoch, step))
        now[0] += 1.0  # each backup takes 1 s
        return 1.0

    callback = BackupCallback(
        save, InterruptSignals(False), None, end_to_end=False, share=0.1, clock=lambda: now[0]
    )
    for epoch in range(8):
        now[0] += 4.0  # a 4 s epoch
        callback.on_epoch_end(epoch)
    assert saved == [(1, 0), (4, 0), (7, 0)]  # after 4 s, then every 12 s of training
    every = BackupCallback(save, InterruptSignals(False), None, end_to_end=False, share=None)
    every.on_epoch_end(8)
    every.on_epoch_end(9)
    assert saved[-2:] == [(9, 0), (10, 0)]
    # A stage's last epoch, and one after which training stops, are left to the
    # stage's own backup, written as `fit` returns.
    ending = BackupCallback(
        save, InterruptSignals(False), None, end_to_end=False, stage_end=12, share=None
    )
    ending.set_model(types.SimpleNamespace(stop_training=False))
    ending.on_epoch_end(10)
    ending.on_epoch_end(11)
    assert saved[-1] == (11, 0) and len(saved) == 6
    ending.model.stop_training = True  # early stopping, before the last epoch
    ending.on_epoch_end(10)
    assert len(saved) == 6


def test_a_resumed_run_says_where_it_resumes_and_continues_the_history(tmp_path, capsys):
    _interrupted(tmp_path)  # stage 1 done (epochs 1-2), stage 2 crashed in its first epoch
    capsys.readouterr()
    tuner = kerastl.FineTuner(_model(), verbose=1)
    history = tuner.fit(_data(), _data(8, seed=1), stages=STAGES, backup_dir=tmp_path)
    out = capsys.readouterr().out
    assert f"resuming the run backed up in {tmp_path}: epoch 3; feature caches" in out
    assert history.epoch == [0, 1, 2, 3] and len(history.history["loss"]) == 4
    assert [row["stage"] for row in tuner.recorder.rows] == ["1:head"] * 2 + ["2:all"] * 2
    assert tuner.stage_starts == [0, 2]
