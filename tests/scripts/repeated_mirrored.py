"""Two MirroredStrategy objects in one process (a notebook cell run twice).

`kerastl` (default): `get_strategy("mirrored")` twice, a model of one size
trained under the first, one of another size under the second.
`raw`: the same with `tf.distribute.MirroredStrategy()` twice, which fails
in TF 2.21 (both share collective instance keys: "Shape mismatch in the
collective instance 100").
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

import kerastl

kerastl.split_cpu(2)
import keras  # noqa: E402


def strategy():
    if sys.argv[1:] == ["raw"]:
        return tf.distribute.MirroredStrategy()
    return kerastl.get_strategy("mirrored")


def fit(strategy, width):
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(width), keras.layers.Dense(2)]
        )
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    y = np.arange(32) % 2
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
    return history.history["loss"][0]


first = strategy()
fit(first, 300)
second = strategy()
print(f"same_object={second is first}")
print(f"second_loss={fit(second, 7):.4f}")
