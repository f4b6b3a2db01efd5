"""The Keras bugs kerastl's own classes repair: each shown failing with the
fixes switched off (KERASTL_KERAS_FIXES=0) and passing with them; and Keras
itself left untouched for everything that is not kerastl's. The
MirroredStrategy mixed-precision fix is shown in test_mirrored.py, in the one
child process all MirroredStrategy checks share.

If one of the "without the fix" tests starts failing, a Keras release has
repaired that bug: set the fix's `fixed_in` in kerastl/distribute/keras_fixes.py.
"""

import time

import pytest
from processes import finish, run_script, workers

from kerastl.distribute import keras_fixes


@pytest.mark.slow
def test_without_the_fix_multi_worker_fit_fails_on_per_replica_values(tmp_path):
    start = time.monotonic()
    with workers(
        "multi_worker_training.py",
        str(tmp_path / "b"),
        str(tmp_path / "w"),
        KERASTL_KERAS_FIXES="0",
    ) as processes:
        outputs = finish(processes, deadline=start + 120)
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode != 0
        assert "unsupported type (<class 'tensorflow.python.distribute.values.PerReplica'>)" in (
            output
        ), output[-3000:]


def test_the_multi_worker_reduction_is_kerastls_only_inside_its_own_fit(monkeypatch):
    """Keras's module-level `reduce_per_replica` gets kerastl's mean only in the
    thread running a kerastl model's multi-worker `fit`: another thread calling
    it meanwhile, and everyone afterwards, get Keras's own (a process-wide swap
    gave the other thread kerastl's)."""
    import threading

    from kerastl._internals import tensorflow_trainer

    trainer = tensorflow_trainer()

    class MultiWorker:  # stands for a multi-worker strategy: the fix calls `reduce`
        def reduce(self, op, value, axis):
            assert (op, axis) == ("MEAN", None)
            return "kerastl"

    def keras_own(values, strategy, reduction):
        return "keras"

    monkeypatch.setattr(trainer, "reduce_per_replica", keras_own)  # put back after the test
    monkeypatch.setattr(keras_fixes, "is_multi_worker", lambda s: isinstance(s, MultiWorker))
    strategy, seen = MultiWorker(), {}
    inside, leave = threading.Event(), threading.Event()

    def kerastl_fit():
        with keras_fixes._multi_worker_reduction(strategy):
            seen["its fit"] = trainer.reduce_per_replica({"loss": 1.0}, strategy, "auto")
            inside.set()
            leave.wait(30)

    fit = threading.Thread(target=kerastl_fit)
    fit.start()
    assert inside.wait(30)
    seen["another thread"] = trainer.reduce_per_replica({"loss": 1.0}, strategy, "auto")
    leave.set()
    fit.join()
    seen["afterwards"] = trainer.reduce_per_replica({"loss": 1.0}, strategy, "auto")
    expected = {"its fit": {"loss": "kerastl"}, "another thread": "keras", "afterwards": "keras"}
    assert seen == expected
    assert trainer.reduce_per_replica.keras_own is keras_own  # one dispatcher, Keras's behind it


def test_fixes_apply_to_keras_3_until_the_release_that_repairs_them():
    fix = keras_fixes._Fix("f", "issue", fixed_in=(3, 16))
    assert fix.applies_to((3, 15, 1)) and not fix.applies_to((3, 16, 0))
    assert not fix.applies_to((2, 15, 0))
    assert keras_fixes._version("3.15.1") == (3, 15, 1)
    assert keras_fixes._version("3.16.0.dev2026") == (3, 16, 0)
    assert all(fix.fixed_in is None for fix in keras_fixes.FIXES)  # none fixed as of 3.15.1


def test_apply_keras_fixes_is_deprecated_and_changes_nothing():
    import keras

    before = keras.optimizers.MultiOptimizer.apply, keras.optimizers.LossScaleOptimizer.check_finite
    with pytest.warns(DeprecationWarning, match="deprecated and does nothing"):
        names = keras_fixes.apply_keras_fixes()
    assert names == tuple(fix.name for fix in keras_fixes.FIXES)
    after = keras.optimizers.MultiOptimizer.apply, keras.optimizers.LossScaleOptimizer.check_finite
    assert after == before


_PLAIN_KERAS = """
import keras, numpy as np, tensorflow as tf
from keras.src.backend.tensorflow import trainer
def keras_methods():
    return {
        "MultiOptimizer.apply": keras.optimizers.MultiOptimizer.apply,
        "LossScaleOptimizer.check_finite": keras.optimizers.LossScaleOptimizer.check_finite,
        "Model.fit": keras.Model.fit,
        "Model.compile": keras.Model.compile,
        "_maybe_symbolic_build": trainer.TensorFlowTrainer._maybe_symbolic_build,
        "reduce_per_replica": trainer.reduce_per_replica,
    }
keras_own = keras_methods()
import kerastl
kerastl._import_all()
# kerastl's own training, under a strategy it built, with a group optimizer ...
strategy = kerastl.get_strategy("one_device")
with strategy.scope():  # a small backbone: kerastl's fit and optimizer are the point
    image = keras.Input((32, 32, 3))
    features = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, strides=2)(image))
    model = kerastl.TransferModel(keras.Model(image, features), num_classes=2,
                                  preprocessing="tf")
    model.compile(kerastl.group_optimizer(model, {"head": keras.optimizers.SGD(0.1)},
                                          default=keras.optimizers.SGD(0.01)))
x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
model.fit(x, np.arange(8) % 2, epochs=1, verbose=0)
# ... then a plain Keras model with Keras's MultiOptimizer, one group without gradients.
inputs = keras.Input((4,))
unused = keras.layers.Dense(3, name="unused")
keras.Model(inputs, unused(inputs))
plain = keras.Sequential([inputs, keras.layers.Dense(2, name="used")])
optimizer = keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(
    keras.optimizers.SGD(0.1), {"unused/.*": keras.optimizers.SGD(0.1)}))
plain.compile(optimizer, "mse")
plain.fit(np.ones((4, 4)), np.ones((4, 2)), epochs=1, verbose=0)
now = keras_methods()
print("CHANGED", sorted(name for name in keras_own if now[name] is not keras_own[name]))
print("PLAIN", type(plain.optimizer).__name__)
variables = [*plain.trainable_variables, *unused.trainable_variables]
grads = [keras.ops.ones_like(v) for v in plain.trainable_variables] + [None, None]
fresh = keras.optimizers.MultiOptimizer(keras.optimizers.OptimizerMap(
    keras.optimizers.SGD(0.1), {"unused/.*": keras.optimizers.SGD(0.1)}))
try:
    fresh.apply(grads, variables)
    print("KERAS RAISED nothing")
except ValueError as error:
    print("KERAS RAISED", error)
"""


@pytest.mark.slow
def test_importing_and_using_kerastl_leaves_plain_keras_untouched():
    result = run_script("run_code.py", _PLAIN_KERAS, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CHANGED []" in result.stdout, result.stdout
    assert "PLAIN MultiOptimizer" in result.stdout
    # Keras's own MultiOptimizer keeps Keras's behaviour (the bug GroupOptimizer fixes).
    assert "KERAS RAISED No gradients provided for any variable" in result.stdout, result.stdout


@pytest.mark.parametrize("fixes", ["1", "0"])
def test_multi_optimizer_skips_a_group_without_gradients(monkeypatch, fixes):
    """In this process: the switch is read at each `apply`."""
    import keras
    import numpy as np

    import kerastl

    monkeypatch.setenv(keras_fixes.DISABLE_ENV, fixes)
    inputs = keras.Input((4,))
    unused = keras.layers.Dense(3, name="unused")
    keras.Model(inputs, unused(inputs))  # built, but not on the path below
    model = keras.Model(inputs, [keras.layers.Dense(2, name="used")(inputs)])
    optimizer = kerastl.GroupOptimizer(
        keras.optimizers.OptimizerMap(
            keras.optimizers.SGD(0.1), {"unused/.*": keras.optimizers.SGD(0.1)}
        )
    )
    variables = [*model.trainable_variables, *unused.trainable_variables]
    grads = [keras.ops.ones_like(v) for v in model.trainable_variables] + [None, None]
    before = [np.array(v) for v in variables]
    if fixes == "1":
        optimizer.apply(grads, variables)
        moved = [
            bool(np.abs(np.array(v) - b).max() > 0) for v, b in zip(variables, before, strict=True)
        ]
        assert moved == [True, True, False, False]
    else:  # the bug: the unused group's sub-optimizer raises
        with pytest.raises(ValueError, match="No gradients provided for any variable"):
            optimizer.apply(grads, variables)


def test_the_fixed_optimizers_save_and_load_as_themselves(tmp_path):
    import keras
    import numpy as np

    import kerastl

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    by_path = {"d/bias": keras.optimizers.Adam(0.1)}
    inner = kerastl.GroupOptimizer(
        keras.optimizers.OptimizerMap(keras.optimizers.SGD(0.1), by_path)
    )
    model.compile(keras_fixes.AllReplicaLossScaleOptimizer(inner), "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), epochs=3, verbose=0)
    model.save(tmp_path / "m.keras")
    for loaded in (
        keras.models.load_model(tmp_path / "m.keras"),
        kerastl.load_model(tmp_path / "m.keras"),
    ):
        assert type(loaded.optimizer) is keras_fixes.AllReplicaLossScaleOptimizer
        assert type(loaded.optimizer.inner_optimizer) is kerastl.GroupOptimizer
        before = np.array(loaded.layers[-1].kernel)
        loaded.fit(np.ones((4, 3)), np.zeros((4, 2)), verbose=0)  # and still trains
        assert np.abs(np.array(loaded.layers[-1].kernel) - before).max() > 1e-3


@pytest.mark.parametrize("fixes", ["1", "0"])
def test_fit_under_a_strategy_draws_each_batch_once(monkeypatch, fixes):
    """Keras builds a model under a strategy from a batch of an iterator it then
    drops: a generator (kerastl's feature caches draw views in one) runs ahead
    by as much as that iterator's prefetch pulled, a number that varies from
    run to run. The fix builds from the dataset's element spec instead."""
    import keras
    import numpy as np
    import tensorflow as tf

    monkeypatch.setenv(keras_fixes.DISABLE_ENV, fixes)
    drawn = []

    def batches():
        for index in range(4):
            drawn.append(index)
            yield np.full((2, 3), index, "float32"), np.ones((2, 1), "float32")

    signature = (tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((None, 1), tf.float32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        inputs = keras.Input((3,))
        model = keras_fixes.FixedFunctional(inputs, keras.layers.Dense(1)(inputs))
        model.compile(keras.optimizers.SGD(0.1), "mse", metrics=["mae"])
    before = np.array(model.layers[-1].kernel)
    model.fit(dataset, epochs=2, verbose=0)
    model.evaluate(dataset, verbose=0)
    if fixes == "1":
        assert drawn == [0, 1, 2, 3] * 3  # two epochs and the evaluation, nothing else
        assert np.abs(np.array(model.layers[-1].kernel) - before).max() > 1e-3
    else:  # Keras's own build drew from an extra iterator before the first epoch
        assert len(drawn) > 12 and drawn[:1] == [0]


def test_the_first_fit_traces_its_train_step_once(monkeypatch):
    """With no strategy set, Keras builds the optimizer and metrics inside the
    first trace of the train function; the variables they create there make
    `tf.function` trace the whole step again (for Lite0, seconds each). The fix
    builds them before, from the dataset's element spec: one trace, same run."""
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    dataset = tf.data.Dataset.from_tensor_slices(
        (rng.uniform(size=(8, 3)).astype("float32"), rng.integers(0, 2, 8))
    ).batch(4)
    traces, losses = {}, {}
    for fixes in ("1", "0"):
        monkeypatch.setenv(keras_fixes.DISABLE_ENV, fixes)
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,))
        hidden = keras.layers.Dropout(0.3)(keras.layers.Dense(4, activation="relu")(inputs))
        model = keras_fixes.FixedFunctional(inputs, keras.layers.Dense(2)(hidden))
        model.compile(
            keras.optimizers.Adam(0.1),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        traces[fixes] = []
        train_step = model.train_step
        model.train_step = lambda data, seen=traces[fixes], step=train_step: (
            seen.append(1) or step(data)
        )
        losses[fixes] = model.fit(dataset, epochs=3, verbose=0).history["loss"]
    assert {fixes: len(seen) for fixes, seen in traces.items()} == {"1": 1, "0": 2}
    # The same run either way (the slots start at zero wherever they are made);
    # the bound is float32 rounding of a different op order, far below the
    # loss's change over the epochs.
    np.testing.assert_allclose(losses["1"], losses["0"], rtol=1e-6)
    assert abs(losses["1"][-1] - losses["1"][0]) > 1e-3
