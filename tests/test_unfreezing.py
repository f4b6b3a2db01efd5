"""Gradual unfreezing takes effect inside fit and keeps the optimizer state."""

import keras
import numpy as np
import pytest
from checks import assert_same_optimizer_state, weights_snapshot

import kerastl

SIDE = 64
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _model():
    model = kerastl.TransferModel("efficientnet-lite0", num_classes=3, input_shape=(SIDE, SIDE, 3))
    kerastl.freeze(model)
    optimizer = kerastl.discriminative_optimizer(model, base_lr=1e-3, lr_mult=10)
    model.compile(optimizer, LOSS)
    return model


def _data(n=8):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, SIDE, SIDE, 3)).astype("float32"), rng.integers(0, 3, n)


class _Spy(keras.callbacks.Callback):
    """Records optimizer variables at the end of epoch 0 and right after the
    unfreezing callback ran at the start of epoch 1 (it is listed after it)."""

    def __init__(self):
        super().__init__()
        self.before = self.after = self.weights_after_step = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.before = {v.path: v.numpy().copy() for v in self.model.optimizer.variables}

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.after = {v.path: v.numpy().copy() for v in self.model.optimizer.variables}
            self.weights_after_step = weights_snapshot(self.model)


def _group_paths(model, name):
    return {v.path for v in kerastl.group_variables(model)[name]}


@pytest.mark.slow
def test_unfreezing_step_trains_the_next_group_and_keeps_the_heads_moments(tmp_path):
    """Then the unfrozen model saves, loads back with its groups and optimizer
    state, predicts the same and trains (one Lite0 run for both checks)."""
    model = _model()
    start = weights_snapshot(model)
    unfreezing, spy = kerastl.GradualUnfreezing(every=1, verbose=False), _Spy()
    model.fit(*_data(), batch_size=4, epochs=2, verbose=0, callbacks=[unfreezing, spy])
    end = weights_snapshot(model)

    assert unfreezing.history == [(1, ["top_conv", "head"])]
    # The head's Adam moments and counters carried over: not restarted at zero.
    head_slots = [p for p in spy.before if "head_dense_kernel" in p]
    assert len(head_slots) == 2  # momentum and velocity
    for path in head_slots:
        assert np.abs(spy.before[path]).sum() > 0
        np.testing.assert_array_equal(spy.after[path], spy.before[path], err_msg=path)
    head_counter = next(
        p for p in spy.before if p.startswith("head_opt/") and p.endswith("iteration")
    )
    assert spy.after[head_counter] == spy.before[head_counter] == 2

    # The newly unfrozen group trained in epoch 2; frozen groups never moved.
    top_conv = {p for p in _group_paths(model, "top_conv") if "kernel" in p}
    assert top_conv and all(not np.array_equal(spy.weights_after_step[p], end[p]) for p in top_conv)
    frozen = set().union(*(_group_paths(model, g) for g in ["stem", "block1", "block6", "block7"]))
    frozen |= {p for p in start if "moving_" in p}
    for path in frozen:
        np.testing.assert_array_equal(start[path], end[path], err_msg=path)

    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert kerastl.trainable_groups(loaded) == kerastl.trainable_groups(model)
    assert_same_optimizer_state(model.optimizer, loaded.optimizer)
    x, _ = _data()
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    loaded.fit(*_data(), batch_size=4, epochs=1, verbose=0)


@pytest.mark.slow
def test_unfreezing_respects_max_groups_and_reaches_the_bottom():
    model = _model()
    unfreezing = kerastl.GradualUnfreezing(every=1, max_groups=3, verbose=False)
    model.fit(*_data(4), batch_size=4, epochs=4, verbose=0, callbacks=[unfreezing])
    assert [trained for _, trained in unfreezing.history] == [
        ["top_conv", "head"],
        ["block7", "top_conv", "head"],
    ]


def test_every_is_validated():
    with pytest.raises(ValueError, match="every=0"):
        kerastl.GradualUnfreezing(every=0)
