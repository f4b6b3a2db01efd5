"""Trains the same model with a group optimizer on one device and under
MirroredStrategy over 2 logical CPU devices; prints the max weight difference.

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

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import kerastl  # noqa: E402


def train(strategy):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = kerastl.TransferModel("vgg16", num_classes=3, weights=None, input_shape=(32, 32, 3))
        optimizer = kerastl.group_optimizer(
            model,
            {"head": keras.optimizers.SGD(1e-2, momentum=0.9)},
            default=keras.optimizers.SGD(1e-3),
        )
        model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 32)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model.fit(dataset, epochs=2, verbose=0)
    return [v.numpy() for v in model.weights], int(model.optimizer.iterations.numpy())


one, steps_one = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored_strategy.num_replicas_in_sync == 2
two, steps_two = train(mirrored_strategy)
moved = max(float(np.max(np.abs(a - b))) for a, b in zip(one, two, strict=True))
print(f"max_abs_diff={moved:.3e} steps={steps_one},{steps_two}")
sys.exit(0)
