"""Freezing takes effect in `fit`: frozen variables stay bit-identical."""

import keras
import numpy as np
import pytest
from checks import weights_snapshot

import kerastl

SIDE = 64


def _model():
    # Real pretrained weights: with random weights and BatchNorm in inference
    # mode, activations shrink to ~1e-13 and the updates vanish in float32.
    model = kerastl.TransferModel(
        "efficientnet-lite0", num_classes=3, input_shape=(SIDE, SIDE, 3), dropout=0.1
    )
    _compile(model)
    return model


def _compile(model, learning_rate=0.05):
    model.compile(
        keras.optimizers.SGD(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _data():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (8, SIDE, SIDE, 3)).astype("float32"), rng.integers(0, 3, 8)


def _fit_one_step(model):
    x, y = _data()
    before = weights_snapshot(model)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after = weights_snapshot(model)
    return {path for path in before if not np.array_equal(before[path], after[path])}


def _paths(model, groups, granularity="coarse"):
    named = kerastl.layer_groups(model, granularity)
    return {v.path for g in groups for layer in named[g] for v in layer.weights}


@pytest.mark.slow
def test_frozen_backbone_is_bit_identical_after_a_fit_step():
    model = _model()
    kerastl.freeze(model)
    changed = _fit_one_step(model)
    assert changed == {"head_dense/kernel", "head_dense/bias"}
    backbone_paths = _paths(model, [g for g in kerastl.layer_groups(model) if g != "head"])
    assert any("moving_mean" in p for p in backbone_paths)  # BN statistics are among them
    assert not changed & backbone_paths


def test_freeze_to_trains_the_unfrozen_kernels_but_not_their_batchnorm():
    model = _model()
    trained = kerastl.freeze_to(model, "block6")
    assert trained == ["block6", "block7", "top_conv", "head"]
    changed = _fit_one_step(model)
    unfrozen = _paths(model, trained)
    kernels = {p for p in unfrozen if p.endswith("/kernel") or p.endswith("depthwise_kernel")}
    batch_norm = {p for p in unfrozen if "moving_" in p or "/gamma" in p or "/beta" in p}
    assert kernels and kernels <= changed
    assert batch_norm and not batch_norm & changed
    frozen = _paths(model, ["stem", "block1", "block2", "block3", "block4", "block5"])
    assert not frozen & changed


@pytest.mark.slow
def test_train_bn_opts_in_to_batchnorm_updates():
    model = _model()
    kerastl.freeze_to(model, "block7", train_bn=True)
    changed = _fit_one_step(model)
    block7 = _paths(model, ["block7"])
    assert {p for p in block7 if "moving_mean" in p} <= changed
    assert {p for p in block7 if p.endswith("/gamma")} <= changed
    assert not _paths(model, ["stem"]) & changed


@pytest.mark.slow
def test_keras_ignores_training_false_on_a_nested_backbone():
    """keras-team/keras#20285, the reason BN is frozen by flag: calling a
    trainable backbone with `training=False` does not keep its BatchNorm in
    inference mode during `fit`. If this starts failing, Keras fixed it. The
    bug is Keras's nesting, so any backbone with a BatchNormalization shows it:
    a convolution and one (a pretrained Lite0 took 15 s alone for the same)."""
    inner = keras.Input((SIDE, SIDE, 3))
    normalized = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, strides=2)(inner))
    backbone = keras.Model(inner, normalized, name="nested")
    inputs = keras.Input((SIDE, SIDE, 3))
    outputs = keras.layers.Dense(3)(
        keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False))
    )
    model = keras.Model(inputs, outputs)
    _compile(model)
    changed = _fit_one_step(model)
    assert any("moving_mean" in path for path in changed)


@pytest.mark.slow
def test_changing_what_trains_recompiles_with_a_fresh_optimizer_that_keeps_state():
    model = _model()
    kerastl.freeze_to(model, -2)  # top_conv and the head first: not Lite0's whole backward pass
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    _fit_one_step(model)
    old_optimizer = model.optimizer
    momentum = {v.path: v.numpy().copy() for v in old_optimizer.variables}
    assert int(old_optimizer.iterations.numpy()) == 1
    kerastl.freeze(model)
    assert model.compiled and model.optimizer is not old_optimizer
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    # The head kept training: its momentum and the step count carry over.
    carried = {v.path: v.numpy() for v in model.optimizer.variables}
    head_slots = [p for p in carried if "head_dense" in p]
    assert head_slots and all(np.array_equal(carried[p], momentum[p]) for p in head_slots)
    assert int(model.optimizer.iterations.numpy()) == 1
    assert _fit_one_step(model) == {"head_dense/kernel", "head_dense/bias"}
    assert int(model.optimizer.iterations.numpy()) == 2
    assert "accuracy" in model.evaluate(*_data(), verbose=0, return_dict=True)


@pytest.mark.slow
def test_recompile_false_makes_the_next_fit_raise_until_compile():
    model = _model()
    kerastl.freeze(model, recompile=False)
    with pytest.raises(ValueError, match="compile"):
        model.fit(*_data(), epochs=1, verbose=0)
    _compile(model)
    assert _fit_one_step(model) == {"head_dense/kernel", "head_dense/bias"}


def test_a_model_that_cannot_be_recompiled_warns_and_must_be_compiled_again():
    model = _model()

    def unregistered_loss(y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)

    model.compile(keras.optimizers.SGD(0.05), unregistered_loss)
    with pytest.warns(UserWarning, match="could not be recompiled automatically"):
        kerastl.freeze(model)
    with pytest.raises(ValueError, match="compile"):
        model.fit(*_data(), epochs=1, verbose=0)


def test_freeze_to_accepts_fastai_style_negative_indices():
    model = _model()
    assert kerastl.freeze_to(model, -2) == ["top_conv", "head"]


def test_unknown_group_lists_the_valid_ones():
    model = _model()
    with pytest.raises(ValueError, match=r"Unknown layer group 'conv5'.*'block7'"):
        kerastl.freeze_to(model, "conv5")
    with pytest.raises(ValueError, match=r"out of range"):
        kerastl.freeze_to(model, 99)
    with pytest.raises(TypeError, match=r"group=2.5"):
        kerastl.freeze_to(model, 2.5)


def test_trainable_groups_reports_each_state():
    model = _model()
    kerastl.freeze_to(model, "top_conv")
    states = kerastl.trainable_groups(model)
    assert states["stem"] == "frozen" and states["top_conv"] == "trainable"
    assert states["head"] == "trainable"
    table = kerastl.describe(model)
    assert "top_conv" in table and "frozen" in table and "total" in table
