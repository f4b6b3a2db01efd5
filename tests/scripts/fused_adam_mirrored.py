"""Fits the same small model with `FusedAdamW` and with Keras's `AdamW` under
MirroredStrategy over 2 logical CPUs; prints their relative weight difference
and whether each model's two replicas hold the same weights.

Run in its own process: logical devices must be set before TensorFlow starts.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

import kerastl

kerastl.split_cpu(2)
import keras  # noqa: E402

from kerastl.fused_adam import FusedAdamW  # noqa: E402
from kerastl.training.schedules import warmup_cosine  # noqa: E402


def fitted(optimizer_class):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
        )
        optimizer = optimizer_class(warmup_cosine(4, 1)(1e-2), weight_decay=0.1)
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32)
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
    replicas = [[v.numpy() for v in w.value.values] for w in model.weights]
    agree = all(
        np.allclose(copies[0], other, rtol=1e-6, atol=0) for copies in replicas for other in copies
    )
    return [w.numpy() for w in model.weights], agree


ours, ours_agree = fitted(FusedAdamW)
theirs, theirs_agree = fitted(keras.optimizers.AdamW)
difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(ours, theirs, strict=True)))
relative = difference / np.sqrt(sum(np.sum(b**2) for b in theirs))
print(f"relative={relative:.3e} replicas_equal={ours_agree and theirs_agree}")
