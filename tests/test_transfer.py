"""The transfer report's from-scratch baseline."""

import keras
import numpy as np
import tensorflow as tf

import kerastl
from kerastl.app.transfer_report import SCRATCH_LR, markdown, scratch_stage


def _random_bn_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    backbone = keras.Model(inputs, keras.layers.ReLU()(x), name="tiny")
    return kerastl.TransferModel(backbone, 2, preprocessing="tf")


def test_the_scratch_baseline_trains_batch_norm_statistics_and_scales():
    # A random network whose BatchNorm statistics stay at mean 0 / variance 1
    # feeds unnormalised activations forward: the baseline could not learn.
    model = _random_bn_model()
    bn = model.backbone.get_layer("bn")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (64, 16, 16, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 127.5).astype("int64")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    kerastl.FineTuner(model, verbose=0).fit(data, stages=[scratch_stage(2)])
    # 8 steps at momentum 0.99 move the moving variance ~8% of the way from 1 to
    # the batch variance (measured: 0.93-0.94); frozen statistics stay at 1.
    assert np.abs(np.array(bn.moving_variance) - 1).max() > 1e-2
    assert np.abs(np.array(bn.gamma) - 1).max() > 1e-5


def test_the_scratch_recipe_is_stated_in_the_report():
    stage = scratch_stage(7, "text")
    assert (stage.epochs, stage.train, stage.lr) == (7, "all", SCRATCH_LR["text"])
    rows = [
        {"model": "scratch", "training": "everything", "best": 0.5, "epoch": 3, "seconds": 1.0},
        {"model": "fine-tuned", "training": "stages", "best": 0.9, "epoch": 2, "seconds": 2.0},
    ]
    text = markdown(rows, "val_accuracy")
    assert "| scratch | everything | 0.5000 | 3 | 1.0 |" in text
