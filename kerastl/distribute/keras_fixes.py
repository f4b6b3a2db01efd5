"""The fixes Keras needs to train correctly (under tf.distribute and with
group optimizers), in one place, applied to kerastl's own objects only.

Nothing here changes Keras for the rest of the process: a user who imports
kerastl and trains a plain Keras model gets plain Keras
(`tests/test_keras_fixes.py` checks it). Each fix lives on a class of ours:

- `FixedTraining`, mixed into `TransferModel` and into the models a cached
  stage trains, repairs `fit` under MultiWorkerMirroredStrategy
  (keras-team/keras#20585), builds the model under any strategy without
  drawing a batch from a throwaway iterator (which made runs under
  OneDeviceStrategy differ from process to process), builds the optimizer
  and metrics before the first trace when no strategy is set (Keras builds
  them inside it, and `tf.function` then traces the whole train step twice:
  the first `fit` of a Lite0 took twice as long), and gives mixed-float16
  compiles the loss-scale fix.
  Keras reduces the logs with a module-level function that no class can
  override, so the first such multi-worker `fit` puts a dispatcher in its
  place that calls Keras's own function for every caller but a kerastl
  model's `fit`/`evaluate` under a multi-worker strategy (a context
  variable, so other models and other threads get Keras's behaviour).
- `AllReplicaLossScaleOptimizer`: a `LossScaleOptimizer` whose overflow
  check spans every replica.
- `GroupOptimizer` (what `kerastl.group_optimizer` returns): a
  `MultiOptimizer` that lets a group without gradients rest.

All five bugs are still present in Keras 3.15.1, the newest release checked
(`fixed_in` is `None`). The tests run each failing case with the fixes
switched off (`KERASTL_KERAS_FIXES=0`, read at each call: in a fresh process,
or set for one test where a process of its own is not needed) and expect the failure:
when a Keras release repairs one, that test fails, and its `fixed_in` is set
to that release so the fix no longer applies there.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import threading
import warnings

import keras

from kerastl._internals import (
    epoch_dataset,
    multi_optimizer_variables,
    optimizer_for,
    symbolic_build,
    tensorflow_trainer,
    trainer_strategy,
)

DISABLE_ENV = "KERASTL_KERAS_FIXES"


@dataclasses.dataclass(frozen=True)
class _Fix:
    name: str
    issue: str
    fixed_in: tuple[int, ...] | None

    def applies_to(self, version: tuple[int, ...]) -> bool:
        return version >= (3,) and (self.fixed_in is None or version < self.fixed_in)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


FIXES = (
    _Fix(
        name="multi_worker_fit",
        issue="https://github.com/keras-team/keras/issues/20585",
        fixed_in=None,
    ),
    _Fix(
        name="build_without_drawing_a_batch",
        issue="TensorFlowTrainer._maybe_symbolic_build draws one batch from a throwaway "
        "iterator under any strategy; the dataset's prefetch pulls a varying number of "
        "batches through it, advancing Python-side state (a generator's random draws)",
        fixed_in=None,
    ),
    _Fix(
        name="build_before_the_first_trace",
        issue="With no strategy set, TensorFlowTrainer._maybe_symbolic_build leaves the "
        "optimizer and metrics unbuilt until the train function is first traced; the "
        "variables they create there make tf.function trace the whole step a second time",
        fixed_in=None,
    ),
    _Fix(
        name="loss_scale_all_replicas",
        issue="LossScaleOptimizer.check_finite sees only replica 0 before the all-reduce",
        fixed_in=None,
    ),
    _Fix(
        name="multi_optimizer_missing_gradients",
        issue="MultiOptimizer.apply passes a group's all-None gradients to its sub-optimizer",
        fixed_in=None,
    ),
)


def applies(name: str) -> bool:
    """Whether the fix `name` is on: the TensorFlow backend, a Keras release it
    applies to, and `KERASTL_KERAS_FIXES` not set to `0`."""
    if os.environ.get(DISABLE_ENV, "1") == "0" or keras.backend.backend() != "tensorflow":
        return False
    fix = next(fix for fix in FIXES if fix.name == name)
    return fix.applies_to(_version(keras.__version__))


def apply_keras_fixes() -> tuple[str, ...]:
    """Deprecated: the fixes now live on kerastl's own classes; nothing to install.

    Returns:
        The names of the fixes that apply to the Keras in use (see `FIXES`).

    Example:
        >>> kerastl.apply_keras_fixes()  # DeprecationWarning; Keras is left as it is
        ('multi_worker_fit', 'loss_scale_all_replicas', 'multi_optimizer_missing_gradients')
    """
    warnings.warn(
        "kerastl.apply_keras_fixes() is deprecated and does nothing: the fixes are part of "
        "kerastl's own classes (TransferModel, group_optimizer) and no longer change Keras "
        "for the whole process.",
        DeprecationWarning,
        stacklevel=2,
    )
    return tuple(fix.name for fix in FIXES if applies(fix.name))


def is_multi_worker(strategy) -> bool:
    """Whether `strategy` is a MultiWorkerMirroredStrategy spanning several workers."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    cluster = strategy.cluster_resolver.cluster_spec()
    return sum(cluster.num_tasks(job) for job in ("chief", "worker") if job in cluster.jobs) > 1


# === Fix 2: LossScaleOptimizer under several replicas ===
# `check_finite` looks at the replica's local gradients, before the optimizer
# all-reduces them, and the TF path then keeps replica 0's answer. When only
# another replica overflows, the summed gradients are inf/NaN but get applied:
# weights turn NaN and never recover. The fix makes the answer global.


class AllReplicaLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """`keras.optimizers.LossScaleOptimizer` deciding overflow across all replicas.

    kerastl's models wrap their optimizer in it when compiled under
    `mixed_float16` (Keras would wrap it in the plain one).

    Example:
        >>> optimizer = AllReplicaLossScaleOptimizer(keras.optimizers.Adam(1e-3))
    """

    def check_finite(self, grads):
        import tensorflow as tf

        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if not applies("loss_scale_all_replicas") or context is None:
            return finite
        if context.num_replicas_in_sync == 1:
            return finite
        overflowed = tf.cast(tf.logical_not(finite), tf.float32)
        return tf.equal(context.all_reduce(tf.distribute.ReduceOp.SUM, overflowed), 0.0)


keras.saving.register_keras_serializable("kerastl")(AllReplicaLossScaleOptimizer)


# === Fix 3: MultiOptimizer with a group that gets no gradient ===
# A single optimizer skips variables whose gradient is None (with a warning).
# `MultiOptimizer.apply` hands each sub-optimizer its share unfiltered, so a
# group whose variables all lack gradients (BERT's pooler under mean pooling,
# a frozen branch) makes that sub-optimizer raise "No gradients provided for
# any variable" although other groups have gradients. The fix drops the
# None pairs before dispatching, as a single optimizer would.


class GroupOptimizer(keras.optimizers.MultiOptimizer):
    """`keras.optimizers.MultiOptimizer` where a group with no gradients rests.

    `kerastl.group_optimizer` and `discriminative_optimizer` return it; it
    saves and loads like its parent (registered as `kerastl>GroupOptimizer`).

    Example:
        >>> GroupOptimizer(keras.optimizers.OptimizerMap(keras.optimizers.SGD(0.1)))
    """

    def apply(self, grads, trainable_variables=None):
        if not applies("multi_optimizer_missing_gradients"):
            return super().apply(grads, trainable_variables)
        if len(grads) == 0:
            return
        if trainable_variables is None:
            trainable_variables = multi_optimizer_variables(self)
        if all(grad is None for grad in grads):
            raise ValueError("No gradients provided for any variable.")
        if not self.built:
            self.build(trainable_variables)
            self.built = True
        shares: dict[int, list] = {id(optimizer): [] for optimizer in self.optimizers}
        for grad, variable in zip(grads, trainable_variables, strict=True):
            if grad is not None:
                shares[id(optimizer_for(self, variable))].append((grad, variable))
        for optimizer in self.optimizers:
            share = shares[id(optimizer)]
            if share:
                optimizer.apply([g for g, _ in share], [v for _, v in share])
        self.iterations.assign_add(1)


keras.saving.register_keras_serializable("kerastl")(GroupOptimizer)


# === Fix 1: MultiWorkerMirroredStrategy + fit (keras-team/keras#20585) ===
# `_maybe_symbolic_build` reduces the first distributed batch with
# `strategy.reduce`, which under multi-worker collectives tries to turn the
# `PerReplica` into a tensor and raises. Then `reduce_per_replica` averages
# the scalar logs with `axis=0`, which fails on scalars; the mean across
# replicas alone (`axis=None`) is what MirroredStrategy computes.
#
# === Fix 4: building under a strategy draws a batch ===
# Under any strategy (one device included) `fit` and `evaluate` first build
# the model from a batch drawn from an iterator of their own, then drop it
# and start the epoch on a new one. Whatever that first iterator's prefetch
# pulled through the dataset is lost, and how much it pulled depends on
# thread timing: a dataset with Python-side state (a generator drawing
# random views or orders, as kerastl's feature caches do) starts the epoch
# from a different state in every process. Building only needs shapes and
# dtypes, which the dataset's element spec gives without iterating; doing so
# also avoids the `PerReplica` reduction of Fix 1. A dataset whose spec has
# a component of unknown rank (a generator declared without shapes) gets
# Keras's own build, and under multi-worker its failure.
#
# === Fix 5: with no strategy, the first trace builds, and so traces twice ===
# With no strategy set, Keras skips that build and leaves the optimizer's
# slots and the metrics' variables to be made inside the first trace of the
# train function. A `tf.function` whose first trace creates variables is
# traced again, so the whole train step (forward, gradients, update) is
# traced twice: for Lite0 at 32 px a `fit` of two batches took 16.7 s, 8.6 s
# with this fix. Fix 4's build from the element spec, run with no strategy
# too, makes them first: one trace, the same numbers.


class FixedTraining:
    """Mixin for kerastl's Keras models: multi-worker `fit` and the all-replica
    loss scale (see the module docstring). Put it before `keras.Model`.

    Example:
        >>> class Trainer(FixedTraining, keras.Model): ...
    """

    def compile(self, optimizer="rmsprop", *args, **kwargs):
        if (
            applies("loss_scale_all_replicas")
            and self.dtype_policy.name == "mixed_float16"
            and kwargs.get("auto_scale_loss", True)
            and optimizer is not None
        ):
            optimizer = keras.optimizers.get(optimizer)
            if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                optimizer = AllReplicaLossScaleOptimizer(optimizer, name="loss_scale_optimizer")
        super().compile(optimizer, *args, **kwargs)

    def fit(self, *args, **kwargs):
        with _multi_worker_reduction(self.distribute_strategy):
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with _multi_worker_reduction(self.distribute_strategy):
            return super().evaluate(*args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        symbolic_batch = None
        fix = (
            "build_without_drawing_a_batch"
            if trainer_strategy(self) is not None
            else "build_before_the_first_trace"
        )
        if applies(fix) and iterator is not None:
            symbolic_batch = _symbolic_batch(epoch_dataset(iterator).element_spec)
        if symbolic_batch is None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            symbolic_build(self, symbolic_batch)


def _symbolic_batch(element_spec):
    """Symbolic tensors shaped like one batch of a dataset with this element
    spec, the batch size left open; None when a component's rank is unknown."""
    specs = keras.tree.flatten(element_spec)
    if any(spec.shape.rank is None or spec.shape.rank == 0 for spec in specs):
        return None
    return keras.tree.map_structure(
        lambda spec: keras.KerasTensor((None, *spec.shape[1:]), dtype=spec.dtype.name),
        element_spec,
    )


class FixedFunctional(FixedTraining, keras.Model):
    """A functional model with `FixedTraining`: `FixedFunctional(inputs, outputs)`.

    Example:
        >>> trainer = FixedFunctional(features, logits, name="head")
    """


_install_lock = threading.Lock()
# On only inside a kerastl model's `fit`/`evaluate` under a multi-worker strategy,
# in the thread (context) that runs it: other models and threads never see it.
_kerastl_reduction = contextvars.ContextVar("kerastl_multi_worker_reduction", default=False)


@contextlib.contextmanager
def _multi_worker_reduction(strategy):
    """Keras's `reduce_per_replica` averages scalar logs on axis 0, which fails
    under multi-worker collectives; while a kerastl model runs there, its calls
    get the mean across replicas alone (what MirroredStrategy computes)."""
    if not (applies("multi_worker_fit") and is_multi_worker(strategy)):
        yield
        return
    _install_reduction_dispatch()
    token = _kerastl_reduction.set(True)
    try:
        yield
    finally:
        _kerastl_reduction.reset(token)


def _install_reduction_dispatch() -> None:
    """Puts, once, a function in place of Keras's module-level `reduce_per_replica`
    (no class can override it) that calls Keras's own unless `_kerastl_reduction`
    is on: every other caller gets Keras's behaviour, at any time, in any thread."""
    trainer = tensorflow_trainer()
    with _install_lock:
        if hasattr(trainer.reduce_per_replica, "keras_own"):
            return
        keras_own = trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if (
                not _kerastl_reduction.get()
                or reduction not in ("auto", "mean")
                or not is_multi_worker(strategy)
            ):
                return keras_own(values, strategy, reduction)
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)

        reduce_per_replica.keras_own = keras_own
        trainer.reduce_per_replica = reduce_per_replica
