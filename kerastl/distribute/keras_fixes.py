"""The fixes Keras needs to train correctly (under tf.distribute and with
group optimizers), in one place.

Each fix is a `_Fix`: what it repairs, the upstream issue, the Keras versions
it applies to, and a function that installs it. `apply_keras_fixes()` installs
those that apply to the Keras in use, once; `get_strategy()` calls it, and so
should code that builds its own `tf.distribute` strategy.

All three bugs are still present in Keras 3.15.1, the newest release checked
(`FIXED_IN` is `None`). The tests run each failing case in a fresh process
with the fixes switched off (`KERASTL_KERAS_FIXES=0`) and expect the failure:
when a Keras release repairs one, that test fails, and its `fixed_in` is set
to that release so the fix no longer installs there.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import keras

DISABLE_ENV = "KERASTL_KERAS_FIXES"


@dataclasses.dataclass(frozen=True)
class _Fix:
    name: str
    issue: str
    fixed_in: tuple[int, ...] | None
    install: Callable[[], None]

    def applies_to(self, version: tuple[int, ...]) -> bool:
        return version >= (3,) and (self.fixed_in is None or version < self.fixed_in)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


# === Fix 1: MultiWorkerMirroredStrategy + fit (keras-team/keras#20585) ===
# `_maybe_symbolic_build` reduces the first distributed batch with
# `strategy.reduce`, which under multi-worker collectives tries to turn the
# `PerReplica` into a tensor and raises. Building only needs shapes and
# dtypes: the first local replica's batch is enough. Then `reduce_per_replica`
# averages the scalar logs with `axis=0`, which fails on scalars; the mean
# across replicas alone (`axis=None`) is what MirroredStrategy computes.


def _install_multi_worker_fit() -> None:
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    @functools.wraps(original_build)
    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or not _is_multi_worker(strategy) or iterator is None:
            return original_build(self, iterator=iterator, data_batch=data_batch)

        def first_replica(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.experimental_local_results(value)[0]
            return value

        for _, _, batches in iterator:
            data_batch = tree.map_structure(first_replica, next(batches))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    @functools.wraps(original_reduce)
    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not _is_multi_worker(strategy):
            return original_reduce(values, strategy, reduction)
        return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica


# === Fix 2: LossScaleOptimizer under several replicas ===
# `check_finite` looks at the replica's local gradients, before the optimizer
# all-reduces them, and the TF path then keeps replica 0's answer. When only
# another replica overflows, the summed gradients are inf/NaN but get applied:
# weights turn NaN and never recover. The fix makes the answer global.


def _install_loss_scale_all_replicas() -> None:
    import tensorflow as tf

    original = keras.optimizers.LossScaleOptimizer.check_finite

    @functools.wraps(original)
    def check_finite(self, grads):
        finite = original(self, grads)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return finite
        overflowed = tf.cast(tf.logical_not(finite), tf.float32)
        return tf.equal(context.all_reduce(tf.distribute.ReduceOp.SUM, overflowed), 0.0)

    keras.optimizers.LossScaleOptimizer.check_finite = check_finite


# === Fix 3: MultiOptimizer with a group that gets no gradient ===
# A single optimizer skips variables whose gradient is None (with a warning).
# `MultiOptimizer.apply` hands each sub-optimizer its share unfiltered, so a
# group whose variables all lack gradients (BERT's pooler under mean pooling,
# a frozen branch) makes that sub-optimizer raise "No gradients provided for
# any variable" although other groups have gradients. The fix drops the
# None pairs before dispatching, as a single optimizer would.


def _install_multi_optimizer_missing_gradients() -> None:
    from keras.src.optimizers.multi_optimizer import MultiOptimizer

    def apply(self, grads, trainable_variables=None):
        if len(grads) == 0:
            return
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        if all(grad is None for grad in grads):
            raise ValueError("No gradients provided for any variable.")
        if not self.built:
            self.build(trainable_variables)
            self.built = True
        shares = [[] for _ in self._inner_optimizers]
        for grad, variable in zip(grads, trainable_variables, strict=True):
            if grad is not None:
                shares[self._var_to_optimizer_idx[self._var_key(variable)]].append((grad, variable))
        for optimizer, share in zip(self._inner_optimizers, shares, strict=True):
            if share:
                optimizer.apply([g for g, _ in share], [v for _, v in share])
        self._iterations.assign_add(1)

    apply.__doc__ = MultiOptimizer.apply.__doc__
    MultiOptimizer.apply = apply


FIXES = (
    _Fix(
        name="multi_worker_fit",
        issue="https://github.com/keras-team/keras/issues/20585",
        fixed_in=None,
        install=_install_multi_worker_fit,
    ),
    _Fix(
        name="loss_scale_all_replicas",
        issue="LossScaleOptimizer.check_finite sees only replica 0 before the all-reduce",
        fixed_in=None,
        install=_install_loss_scale_all_replicas,
    ),
    _Fix(
        name="multi_optimizer_missing_gradients",
        issue="MultiOptimizer.apply passes a group's all-None gradients to its sub-optimizer",
        fixed_in=None,
        install=_install_multi_optimizer_missing_gradients,
    ),
)

_installed: list[str] = []


def apply_keras_fixes() -> tuple[str, ...]:
    """Installs the fixes that apply to the Keras in use (once; idempotent).

    Set the environment variable `KERASTL_KERAS_FIXES=0` to leave Keras
    untouched (the tests use it to show each bug).

    Returns:
        The names of the installed fixes (see `FIXES`).

    Example:
        >>> kerastl.apply_keras_fixes()
        ('multi_worker_fit', 'loss_scale_all_replicas', 'multi_optimizer_missing_gradients')
    """
    if os.environ.get(DISABLE_ENV, "1") == "0" or keras.backend.backend() != "tensorflow":
        return tuple(_installed)
    version = _version(keras.__version__)
    for fix in FIXES:
        if fix.name not in _installed and fix.applies_to(version):
            fix.install()
            _installed.append(fix.name)
    return tuple(_installed)
