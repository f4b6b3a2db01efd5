"""Resuming after a crash (`fit_resumable`)."""

import json

import keras
import numpy as np
import pytest
from _workload import (
    CrashAfter,
    Crashed,
    StopAfterEpoch,
    epoch_dataset,
    flat_weights,
    images,
    resumable_run,
    transfer_model,
)

import kerastl
from kerastl._internals import sublayers
from kerastl.distribute.resume import restore_seed_states, seed_states


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


@pytest.mark.slow
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


def _unfreezing_run(backup, crash_after=None):
    """Three `vgg16`-named blocks (three groups and the head), frozen, then one
    more group every epoch (`GradualUnfreezing`) under `fit_resumable`."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for block, filters in enumerate((4, 8, 8), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{block}_conv1")(x)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
    model = kerastl.TransferModel(keras.Model(inputs, x), 3, backbone_name="vgg16")
    kerastl.freeze(model, recompile=False)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(True))
    unfreezing = kerastl.GradualUnfreezing(every=1, verbose=False)
    callbacks = [unfreezing] + ([CrashAfter(crash_after)] if crash_after else [])
    x, y = images(48)
    kerastl.fit_resumable(
        model,
        lambda epoch: epoch_dataset(x, y, 8, epoch),
        epochs=3,
        backup_dir=str(backup),
        save_freq=3,
        callbacks=callbacks,
        verbose=0,
    )
    return flat_weights(model), unfreezing, model


@pytest.mark.slow
def test_gradual_unfreezing_resumes_with_the_groups_it_had_unfrozen(tmp_path, deterministic_ops):
    """Crashed in epoch 3 (block2 unfrozen at its start) after its batch-3 backup,
    and again in it before that backup (resumed from epoch 2's end): each rerun
    trains what the interrupted run trained, with its optimizer state (before:
    Keras skipped loading the optimizer, whose variables no longer matched, and
    the rerun ended with one group fewer training)."""
    reference, unfreezing, model = _unfreezing_run(tmp_path / "uninterrupted")
    assert [epoch for epoch, _ in unfreezing.history] == [1, 2]  # block3, then block2
    assert int(model.optimizer.iterations) == 18
    for crash_after, resumed_from in ((2 * 6 + 5, (2, 3)), (2 * 6 + 2, (2, 0))):
        backup = tmp_path / f"backup-{crash_after}"
        with pytest.raises(Crashed):
            _unfreezing_run(backup, crash_after)
        state = json.loads((backup / "state.json").read_text())
        assert (state["epoch"], state["step"]) == resumed_from
        weights, resumed, model = _unfreezing_run(backup)
        assert [trained for _, trained in resumed.history] == [
            trained for _, trained in unfreezing.history
        ]
        assert int(model.optimizer.iterations) == 18
        np.testing.assert_array_equal(weights, reference)


def test_every_dropout_state_is_kept_apart_and_a_backup_that_lacks_them_says_so():
    """Keras gives a `Dropout` no `layer.path`: keyed by it, the head's dropout and
    the backbone's drop path shared one key, and a resume restored one of them."""
    model = transfer_model(drop_path=0.2)
    model(np.zeros((2, 32, 32, 3), "float32"), training=True)  # both draw
    states = seed_states(model)
    assert len(states) == 2 and len({str(value) for value in states.values()}) == 2
    dropouts = [layer for layer in sublayers(model) if isinstance(layer, keras.layers.Dropout)]
    for layer in dropouts:
        layer.seed_generator.next()  # the run draws on
    assert seed_states(model) != states
    restore_seed_states(model, states)
    assert seed_states(model) == states
    with pytest.warns(UserWarning, match="holds 1 random-number states and the model has 2"):
        restore_seed_states(model, {"None/seed_generator_0": [0, 0]})
    assert seed_states(model) == states  # none restored
