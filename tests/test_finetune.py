"""FineTuner stages, feature caching, fine_tune, label smoothing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastl


def _backbone():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.ReLU()(x), name="tiny")


def _model(dropout=0.3):
    keras.utils.set_random_seed(0)
    return kerastl.TransferModel(_backbone(), 3, preprocessing="tf", dropout=dropout)


def _data(count=48, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (count, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, count)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _values(variables):
    return [np.array(v) for v in variables]


def test_cached_head_stage_matches_the_uncached_one_and_leaves_the_backbone(capsys):
    heads = []
    for cache in (True, False):
        model = _model()
        backbone = _values(model.backbone.weights)
        history = kerastl.FineTuner(model, cache_features=cache, verbose=0).fit(
            _data(), _data(16, seed=1), stages=[kerastl.Stage(3, lr=1e-2)]
        )
        assert history.epoch == [0, 1, 2] and "val_loss" in history.history
        for before, after in zip(backbone, model.backbone.weights, strict=True):
            np.testing.assert_array_equal(before, after)
        heads.append(_values(model.head_layer.weights))
    assert np.abs(heads[0][0] - _values(_model().head_layer.weights)[0]).max() > 1e-3
    for cached, uncached in zip(*heads, strict=True):
        np.testing.assert_allclose(cached, uncached, atol=1e-5)


def test_later_stages_train_the_backbone_and_number_epochs_across_stages():
    model = _model()
    moving = [layer.moving_mean for layer in model.backbone.layers if hasattr(layer, "moving_mean")]
    kernel_before = np.array(model.backbone.layers[1].kernel)
    bn_before = _values(moving)
    tuner = kerastl.FineTuner(model, verbose=0)
    history = tuner.fit(
        _data(),
        stages=[kerastl.Stage(1), kerastl.Stage(2, train="all", lr=1e-2, lr_mult=10)],
    )
    assert history.epoch == [0, 1, 2] and history.stage_starts == [0, 1]
    kernel = model.backbone.layers[1].kernel
    assert np.abs(np.array(kernel) - kernel_before).max() > 1e-5
    for mean_before, mean in zip(bn_before, moving, strict=True):
        np.testing.assert_array_equal(mean_before, mean)  # BatchNorm stays frozen
    assert isinstance(model.optimizer, keras.optimizers.MultiOptimizer)
    assert model.evaluate(_data(), verbose=0)[0] > 0


def test_fine_tune_runs_head_then_everything():
    model = _model(dropout=0.0)
    history = kerastl.fine_tune(model, _data(), epochs=2, freeze_epochs=1)
    assert history.epoch == [0, 1, 2]
    assert kerastl.trainable_groups(model) == {"backbone": "trainable", "head": "trainable"}


def test_stage_arguments_are_validated():
    with pytest.raises(ValueError, match="Received: epochs=0"):
        kerastl.Stage(0)
    with pytest.raises(ValueError, match="Received: optimizer='rmsprop'"):
        kerastl.Stage(1, optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"Received: lr_mult=0\.5"):
        kerastl.Stage(1, lr_mult=0.5)
    with pytest.raises(ValueError, match="needs validation data"):
        kerastl.FineTuner(_model()).fit(_data(), stages=[kerastl.Stage(1, patience=2)])
    with pytest.raises(ValueError, match="Unknown layer group 'block9'"):
        kerastl.FineTuner(_model(), verbose=0).fit(
            _data(), stages=[kerastl.Stage(1, train="block9")]
        )


def test_sparse_label_smoothing_matches_the_one_hot_formula():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], "float32")
    labels = np.array([0, 2])
    loss = kerastl.SparseSmoothedCrossentropy(0.1)(labels, logits)
    smoothed = np.eye(3)[labels] * 0.9 + 0.1 / 3
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(loss) == pytest.approx(float(-(smoothed * log_softmax).sum(-1).mean()), rel=1e-5)
    restored = keras.losses.deserialize(
        keras.losses.serialize(kerastl.SparseSmoothedCrossentropy(0.2))
    )
    assert restored.label_smoothing == 0.2
