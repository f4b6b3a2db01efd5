"""The small training jobs the distribution and resume tests share (in child
scripts and, where no process boundary is needed, in the test process), and
what they read back from the files those jobs write."""

import contextlib
import os
import signal
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


def small_backbone(drop_path: float = 0.0) -> keras.Model:
    """Two conv/BatchNorm blocks: traces in seconds, where a MobileNet takes ~25 s.
    With `drop_path`, a whole-example dropout between them (as EfficientNet's drop
    path): a second seed generator beside the head's dropout."""
    inputs = keras.Input((SIDE, SIDE, 3))
    x = inputs
    for filters in (8, 16):
        if drop_path and filters == 16:
            x = keras.layers.Dropout(drop_path, noise_shape=(None, 1, 1, 1))(x)
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(inputs, x, name="small_backbone")


def transfer_model(dropout: float = 0.3, drop_path: float = 0.0) -> kerastl.TransferModel:
    """A TransferModel (groups `backbone`, `head`) on `small_backbone(drop_path)`."""
    backbone = small_backbone(drop_path)
    return kerastl.TransferModel(backbone, CLASSES, dropout=dropout, preprocessing="tf")


def compiled_transfer_model(drop_path: float = 0.0, **compile_kwargs) -> kerastl.TransferModel:
    """`transfer_model(drop_path=drop_path)` (seed 0) compiled with a group
    optimizer: Adam 1e-3 on the head, 1e-4 elsewhere. Call it inside the
    strategy's scope."""
    keras.utils.set_random_seed(0)
    model = transfer_model(drop_path=drop_path)
    optimizer = kerastl.group_optimizer(
        model, {"head": keras.optimizers.Adam(1e-3)}, default=keras.optimizers.Adam(1e-4)
    )
    model.compile(
        optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), **compile_kwargs
    )
    return model


class Pause(keras.callbacks.Callback):
    """Sleeps after every batch, so that a test can kill training in the middle.
    With `progress`, first writes "EPOCH BATCH" (the batch that just ended) there."""

    def __init__(self, seconds: float, progress: str | None = None):
        super().__init__()
        self.seconds = seconds
        self.progress = progress
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.progress:
            with open(self.progress + ".tmp", "w") as file:
                file.write(f"{self.epoch} {batch}")
            os.replace(self.progress + ".tmp", self.progress)
        time.sleep(self.seconds)


class Crashed(Exception):
    """What `CrashAfter` raises."""


class _AfterBatches(keras.callbacks.Callback):
    """Calls `act()` after the run's `batches`-th training batch."""

    def __init__(self, batches: int):
        super().__init__()
        self.left = batches

    def on_train_batch_end(self, batch, logs=None):
        self.left -= 1
        if self.left == 0:
            self.act()

    def act(self) -> None:
        raise NotImplementedError


class CrashAfter(_AfterBatches):
    """Raises after the run's `batches`-th training batch, as a crash would stop
    it: nothing after that batch runs (a real SIGKILL: test_staged_resume)."""

    def act(self) -> None:
        raise Crashed


class SigtermAfter(_AfterBatches):
    """Sends this process SIGTERM after the run's `batches`-th training batch, as
    a preemption notice would (from outside: test_staged_resume's SIGTERM test)."""

    def act(self) -> None:
        signal.raise_signal(signal.SIGTERM)


class StopAfterEpoch(keras.callbacks.Callback):
    """A user's callback that ends training at the end of epoch `epoch` (0-based)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.stop_training = True


@contextlib.contextmanager
def op_determinism():
    """`enable_op_determinism` for a block, then the state before it (the child
    scripts enable it for good)."""
    from tensorflow.python.framework import config  # disable_op_determinism is not public

    enabled = config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not enabled:
            config.disable_op_determinism()


def stored_values(saved_model_dir) -> int:
    """How many numbers a SavedModel's checkpoint holds for its variables."""
    shapes = tf.train.list_variables(os.path.join(saved_model_dir, "variables", "variables"))
    return sum(int(np.prod(shape)) for key, shape in shapes if key.endswith("VARIABLE_VALUE"))


def flat_weights(model) -> np.ndarray:
    return np.concatenate([np.asarray(w, dtype="float64").ravel() for w in model.get_weights()])


def resumable_run(backup_dir, callbacks=()):
    """`fit_resumable` on `compiled_transfer_model(drop_path=0.2)`: 3 epochs of 8
    batches of 8, backed up every 3 batches to `backup_dir`.

    Returns:
        The final weights (flat), the history and the model.
    """
    keras.backend.clear_session()
    model = compiled_transfer_model(drop_path=0.2)
    x, y = images(64)
    history = kerastl.fit_resumable(
        model,
        lambda epoch: epoch_dataset(x, y, 8, epoch),
        epochs=3,
        backup_dir=str(backup_dir),
        save_freq=3,
        callbacks=list(callbacks),
        verbose=0,
    )
    return flat_weights(model), history, model


def staged_run(
    backup_dir,
    *,
    lora: bool = False,
    data_hook=None,
    verbose: int = 0,
    callbacks=(),
    patience: int = 3,
) -> tuple[np.ndarray, dict]:
    """A two-stage `FineTuner` run backed up to `backup_dir` after every epoch.

    Deterministic under `enable_op_determinism` (fixed seeds): the training
    data reshuffles every pass and stage 2 draws random flips, so a resumed
    run must replay the passes the interrupted one made.

    Args:
        backup_dir: the run's `backup_dir`.
        lora: stage 2 trains cached LoRA adapters on Lite0's top blocks.
        data_hook: `f(images, labels) -> (images, labels)` on NumPy arrays, called
            for every training batch drawn (caching passes included).
        verbose: `FineTuner`'s verbosity.
        callbacks: more callbacks for every stage (after the others).
        patience: stage 2's early-stopping patience (3: never before its last epoch).

    Returns:
        The final weights (flat) and `{"history", "best_epoch"}`.
    """
    keras.utils.set_random_seed(0)  # before the data: its shuffle's seed depends on it
    x, y = images(48)
    train = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(48, seed=7, reshuffle_each_iteration=True)
        .batch(8)
    )
    if data_hook:
        train = train.map(
            lambda a, b: tf.numpy_function(data_hook, [a, b], [tf.float32, tf.int64], stateful=True)
        ).map(lambda a, b: (tf.ensure_shape(a, [None, SIDE, SIDE, 3]), tf.ensure_shape(b, [None])))
    vx, vy = images(16, seed=1)
    validation = tf.data.Dataset.from_tensor_slices((vx, vy)).batch(8)
    if lora:
        model = kerastl.TransferModel(
            "efficientnet-lite0", CLASSES, weights=None, input_shape=(SIDE, SIDE, 3), dropout=0.3
        )
    else:
        model = transfer_model(drop_path=0.2)  # stage 2 trains it: two dropouts draw
    tuner = kerastl.FineTuner(
        model,
        augmentation="flip",
        cache_views=2,
        class_weight="balanced",
        metrics=("accuracy",),
        callbacks=tuple(callbacks),
        restore_best=False,
        backup_share=None,  # every epoch: the tests wait for given epochs' backups
        verbose=verbose,
    )
    extra = {"ema": 0.9, "patience": patience}
    if lora:
        extra.update(train="block6", rank=2)
    stages = [
        kerastl.Stage(2, lr=1e-2),
        kerastl.Stage(4, **{"train": "all", "lr": 1e-3, "lr_mult": 10, **extra}),
    ]
    history = tuner.fit(train, validation, stages=stages, backup_dir=backup_dir)
    return flat_weights(model), {
        "history": history.history,
        "best_epoch": tuner.recorder.best_epoch,
    }
