"""The small training job the distribution scripts share."""

import time

import keras
import numpy as np
import tensorflow as tf

import kerastl

SIDE = 32
CLASSES = 3


def images(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (count, SIDE, SIDE, 3)).astype("float32")
    return x, rng.integers(0, CLASSES, count)


def epoch_dataset(x, y, batch_size: int, epoch: int) -> tf.data.Dataset:
    """A fixed order per epoch, different between epochs: resumable mid-epoch."""
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=1000 + epoch, reshuffle_each_iteration=False)
        .batch(batch_size)
    )


def small_backbone() -> keras.Model:
    """Two conv/BatchNorm blocks: traces in seconds, where a MobileNet takes ~25 s."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = inputs
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(inputs, x, name="small_backbone")


def transfer_model(dropout: float = 0.3) -> kerastl.TransferModel:
    """A TransferModel (groups `backbone`, `head`) on `small_backbone`."""
    return kerastl.TransferModel(small_backbone(), CLASSES, dropout=dropout, preprocessing="tf")


def compiled_transfer_model(**compile_kwargs) -> kerastl.TransferModel:
    """`transfer_model()` (seed 0) compiled with a group optimizer: Adam 1e-3 on the
    head, 1e-4 elsewhere. Call it inside the strategy's scope."""
    keras.utils.set_random_seed(0)
    model = transfer_model()
    optimizer = kerastl.group_optimizer(
        model, {"head": keras.optimizers.Adam(1e-3)}, default=keras.optimizers.Adam(1e-4)
    )
    model.compile(
        optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_kwargs
    )
    return model


class Pause(keras.callbacks.Callback):
    """Sleeps after every batch, so that a test can kill training in the middle."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


def flat_weights(model) -> np.ndarray:
    return np.concatenate([np.asarray(w, dtype="float64").ravel() for w in model.get_weights()])
