"""Every MirroredStrategy check, over 2 logical CPUs, in one process.

Logical devices must be set before TensorFlow starts, so these run in a child
of the test process; one child for all of them pays TensorFlow's start-up
once. Prints one line `CHECK {json}` per check, in this order:

- `split_cpu`: the devices `split_cpu(2)` made, and the error of splitting
  again once TensorFlow has started.
- `equivalence`: one epoch of the same small conv net (no BatchNorm) on one
  device and mirrored, with a single SGD and with a group optimizer; the
  relative difference of the two updates (see test_mirrored.py).
- `fused_adam`: `FusedAdamW` against Keras's `AdamW`, mirrored.
- `mixed_precision` (fixes on, then `KERASTL_KERAS_FIXES=0`): 40 steps of
  mixed_float16 in which replica 1's gradients overflow for 3 steps.
- `export`: a SavedModel of a model built under the strategy: the numbers its
  checkpoint holds, against the model's parameters (each weight once: the
  signatures capture each variable's first component).
- `repeated`: `get_strategy("mirrored")` twice (a notebook cell run twice).
- `raw_repeated`: `tf.distribute.MirroredStrategy()` twice, which TF 2.21
  refuses ("Shape mismatch in the collective instance"); last, as it may
  leave the collectives unusable.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

import kerastl

DEVICES = kerastl.split_cpu(2)
import keras  # noqa: E402
from _workload import images, stored_values, transfer_model  # noqa: E402

from kerastl.distribute import keras_fixes  # noqa: E402
from kerastl.fused_adam import FusedAdamW  # noqa: E402
from kerastl.training.schedules import warmup_cosine  # noqa: E402


def report(name: str, **values) -> None:
    print("CHECK " + json.dumps({"check": name, **values}), flush=True)


def split_again() -> None:
    try:
        kerastl.split_cpu(3)
        error = None
    except RuntimeError as caught:
        error = str(caught)
    report("split_cpu", devices=DEVICES, error=error)


def conv_net() -> kerastl.TransferModel:
    """Groups `backbone` and `head`; no BatchNorm, so both paths compute the same thing."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    return kerastl.TransferModel(keras.Model(inputs, x, name="conv"), 3, preprocessing="tf")


def equivalence_run(strategy, grouped):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = conv_net()
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
    before = [v.numpy() for v in model.weights]
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
    after = [v.numpy() for v in model.weights]
    return before, after, int(model.optimizer.iterations.numpy())


def relative_update_difference(before, one, two) -> float:
    """|update_one - update_two| / |update_one|, L2 norms over all weights together."""
    moved = np.sqrt(sum(float(np.sum((a - s) ** 2)) for s, a in zip(before, one, strict=True)))
    apart = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(one, two, strict=True)))
    return apart / moved


def equivalence(mirrored) -> None:
    for grouped in (False, True):
        before, one, steps_one = equivalence_run(kerastl.get_strategy("one_device"), grouped)
        _, two, steps_two = equivalence_run(mirrored, grouped)
        report(
            "equivalence",
            optimizer="group" if grouped else "single",
            max_abs_diff=max(float(np.max(np.abs(a - b))) for a, b in zip(one, two, strict=True)),
            relative=relative_update_difference(before, one, two),
            steps=[steps_one, steps_two],
        )


def adam_run(strategy, optimizer_class):
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


def fused_adam(mirrored) -> None:
    ours, ours_agree = adam_run(mirrored, FusedAdamW)
    theirs, theirs_agree = adam_run(mirrored, keras.optimizers.AdamW)
    difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(ours, theirs, strict=True)))
    relative = difference / np.sqrt(sum(np.sum(b**2) for b in theirs))
    report("fused_adam", relative=float(relative), replicas_equal=ours_agree and theirs_agree)


def mixed_precision(mirrored, fixes: str) -> None:
    """Replica 1's half of the first 3 batches carries sample weight 1e4: its scaled
    gradients overflow float16 while replica 0's stay finite, the situation in
    which Keras's LossScaleOptimizer, deciding from replica 0 alone, applies
    inf/NaN gradients."""
    os.environ[keras_fixes.DISABLE_ENV] = fixes
    kerastl.set_precision("mixed_float16")
    try:
        with mirrored.scope():
            keras.utils.set_random_seed(0)
            model = transfer_model(dropout=0.0)
            model.compile(
                kerastl.group_optimizer(
                    model, {"head": keras.optimizers.SGD(1e-2)}, default=keras.optimizers.SGD(1e-3)
                ),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        x, y = images(40 * 8)
        weights = np.ones((40, 8), "float32")
        weights[:3, 4:] = 1e4  # replica 1 gets the second half of each global batch of 8
        dataset = tf.data.Dataset.from_tensor_slices((x, y, weights.ravel())).batch(8)
        losses, scales = [], []

        class Record(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                losses.append(float(logs["loss"]))
                scales.append(float(model.optimizer.dynamic_scale.numpy()))

        model.fit(dataset, epochs=1, verbose=0, callbacks=[Record()])
    finally:
        kerastl.set_precision("float32")
        os.environ.pop(keras_fixes.DISABLE_ENV)
    batch_norm = [v for v in model.non_trainable_weights if "moving" in v.path]
    report(
        "mixed_precision",
        fixes=fixes,
        wrapped=type(model.optimizer).__name__,
        loss_scaled=isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer),
        steps=int(model.optimizer.iterations.numpy()),
        finite_losses=[bool(np.isfinite(loss)) for loss in losses],
        finite_weights=bool(all(np.isfinite(w).all() for w in model.trainable_weights)),
        batch_norm_statistics=len(batch_norm),
        finite_batch_norm=bool(all(np.isfinite(v).all() for v in batch_norm)),
        scales=scales,
    )


def fit_dense(strategy, width: int) -> float:
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(width), keras.layers.Dense(2)]
        )
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    y = np.arange(32) % 2
    history = model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
    return history.history["loss"][0]


def export(mirrored) -> None:
    import tempfile

    import kerastl.export as kx

    with mirrored.scope():
        model = conv_net()
    path = os.path.join(tempfile.mkdtemp(), "saved_model")
    kx.saved_model(model, path, samples=images(4)[0], verbose=0)
    loaded = tf.saved_model.load(path)
    report(
        "export", stored=stored_values(path), parameters=model.count_params(),
        collection=len(loaded.variables), variables=len(model.variables),
    )  # fmt: skip


def repeated(first) -> None:
    fit_dense(first, 300)
    second = kerastl.get_strategy("mirrored")
    report("repeated", same_object=second is first, second_loss=fit_dense(second, 7))


def raw_repeated() -> None:
    """After the strategies above, already the first one's all-reduce meets another's."""
    try:
        fit_dense(tf.distribute.MirroredStrategy(), 300)
        fit_dense(tf.distribute.MirroredStrategy(), 7)
        error = None
    except Exception as caught:  # whatever TF raises is the evidence
        error = f"{type(caught).__name__}: {caught}"
    report("raw_repeated", error=error)


mirrored = kerastl.get_strategy("mirrored")
assert mirrored.num_replicas_in_sync == 2
split_again()
equivalence(mirrored)
fused_adam(mirrored)
mixed_precision(mirrored, "1")
mixed_precision(mirrored, "0")
export(mirrored)
repeated(mirrored)
raw_repeated()
