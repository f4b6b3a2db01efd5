"""Trains the same model (no BatchNorm) for one epoch on one device and under
MirroredStrategy over 2 logical CPU devices, with a single optimizer and with
a group optimizer; prints the max weight difference of each.

Run in its own process: logical devices must be set before TensorFlow starts.
SGD (with and without momentum) is compared: Adam divides by sqrt(v) + eps,
which amplifies the all-reduce's different summation order (measured here:
1.2e-5 for a single plain Adam at lr 1e-4, so not specific to group optimizers).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

import kerastl

kerastl.split_cpu(2)
import keras  # noqa: E402


def train(strategy, grouped):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = kerastl.TransferModel("vgg16", num_classes=3, weights=None, input_shape=(32, 32, 3))
        if grouped:
            optimizer = kerastl.group_optimizer(
                model,
                {"head": keras.optimizers.SGD(1e-2, momentum=0.9)},
                default=keras.optimizers.SGD(1e-3),
            )
        else:
            optimizer = keras.optimizers.SGD(1e-3, momentum=0.9)
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    before = [v.numpy() for v in model.weights]
    model.fit(dataset, epochs=1, verbose=0)
    after = [v.numpy() for v in model.weights]
    return before, after, int(model.optimizer.iterations.numpy())


def relative_update_difference(before, one, two) -> float:
    """|update_one - update_two| / |update_one|, L2 norms over all weights together."""
    moved = np.sqrt(
        sum(float(np.sum((a - start) ** 2)) for start, a in zip(before, one, strict=True))
    )
    apart = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(one, two, strict=True)))
    return apart / moved


mirrored_strategy = kerastl.get_strategy("mirrored")
assert mirrored_strategy.num_replicas_in_sync == 2
for grouped in (False, True):
    before, one, steps_one = train(kerastl.get_strategy("one_device"), grouped)
    _, two, steps_two = train(mirrored_strategy, grouped)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two, strict=True))
    relative = relative_update_difference(before, one, two)
    label = "group" if grouped else "single"
    print(f"{label} max_abs_diff={moved:.3e} relative={relative:.3e} steps={steps_one},{steps_two}")
sys.exit(0)
