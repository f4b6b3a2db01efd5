"""The LR range test leaves the model exactly as it found it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastl


def _setup():
    """A small backbone that trains, BatchNorm statistics included, under a group
    optimizer: every kind of variable `lr_find` moves and must put back (a
    pretrained Lite0 with block7 unfrozen took 21 s alone for the same checks)."""
    keras.utils.set_random_seed(0)
    image = keras.Input((64, 64, 3))
    features = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, strides=2)(image))
    backbone = keras.Model(image, features, name="small")
    model = kerastl.TransferModel(backbone, num_classes=3, preprocessing="tf")
    optimizer = kerastl.group_optimizer(
        model, {"head": keras.optimizers.Adam(1e-3)}, default=keras.optimizers.Adam(1e-5)
    )
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 64, 64, 3)).astype("float32")
    y = rng.integers(0, 3, 32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model.fit(dataset, epochs=1, verbose=0)  # so the optimizer has state to keep
    return model, dataset


@pytest.mark.slow
def test_lr_find_restores_the_model_suggests_inside_the_range_and_stops_on_divergence(
    tmp_path,
):
    model, dataset = _setup()
    optimizer = model.optimizer
    weights = {v.path: v.numpy().copy() for v in model.weights}
    slots = {v.path: v.numpy().copy() for v in optimizer.variables}

    result = kerastl.lr_find(
        model, dataset, start_lr=1e-6, end_lr=1.0, num_steps=20, plot_path=tmp_path / "lr.png"
    )

    assert model.optimizer is optimizer and model.compiled
    for variable in model.weights:
        np.testing.assert_array_equal(
            variable.numpy(), weights[variable.path], err_msg=variable.path
        )
    for variable in optimizer.variables:
        np.testing.assert_array_equal(variable.numpy(), slots[variable.path], err_msg=variable.path)
    assert 1e-6 <= result.suggestion <= 1.0
    assert result.learning_rates[0] == pytest.approx(1e-6)
    assert np.all(np.diff(result.learning_rates) > 0)
    assert len(result.losses) == len(result.smoothed) >= 5
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"

    # A range far past where the loss explodes: the test stops when it diverges
    # (on the restored model: one Lite0 trained for both checks).
    diverged = kerastl.lr_find(
        model, dataset, start_lr=1e-3, end_lr=1e6, num_steps=60, method="valley", divergence=2.0
    )
    assert len(diverged.losses) < 60
    assert diverged.learning_rates[0] <= diverged.suggestion <= diverged.learning_rates[-1]
    model.fit(dataset, epochs=1, verbose=0)  # still trains with its own optimizer
    assert int(optimizer.iterations.numpy()) == 8


def test_lr_find_validates_its_arguments():
    model = kerastl.TransferModel("mobilenet", num_classes=2, weights=None, input_shape=(32, 32, 3))
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((2, 32, 32, 3)), [0, 1])).batch(2)
    with pytest.raises(ValueError, match="compiled model"):
        kerastl.lr_find(model, dataset)
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"start_lr=1\.0, end_lr=0\.1"):
        kerastl.lr_find(model, dataset, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ValueError, match="method='best'"):
        kerastl.lr_find(model, dataset, method="best")
