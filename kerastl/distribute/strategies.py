"""Choosing a tf.distribute strategy, sizing batches for it, and checking scope.

| name | what it needs |
| --- | --- |
| `one_device` | nothing: the first GPU, else the CPU |
| `mirrored` | several GPUs on one machine (or logical CPUs, see `split_cpu`) |
| `multi_worker` | `TF_CONFIG` naming the cluster and this task, on every worker |
| `tpu` | a TPU: `TPU_NAME` or a TPU VM (`tpu="local"`) |
| `parameter_server` | `TF_CONFIG` with `chief`, `worker` and `ps` tasks, and a custom |
|  | training loop: Keras 3's `fit` does not drive this strategy |
"""

from __future__ import annotations

import json
import math
import os
import warnings

import keras

from kerastl._internals import sublayers
from kerastl._rebuild import rebuilt
from kerastl._validation import check_positive_int

# One MirroredStrategy per device set: two in one process share collective
# instance keys (each starts at 100), and the second one's all-reduces then fail
# with "Shape mismatch in the collective instance 100" (a notebook cell rerun).
_MIRRORED: dict[tuple[str, ...], object] = {}

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu", "parameter_server")
LR_SCALING = ("none", "linear", "sqrt")


def split_cpu(num_devices: int) -> list[str]:
    """Splits the CPU into `num_devices` logical devices, for mirrored training.

    For testing multi-device code without GPUs, and for users who want
    `MirroredStrategy` semantics on a CPU. Must run before TensorFlow sets up
    its devices: at the start of the program, before any model, tensor or
    strategy is created.

    Args:
        num_devices: how many logical CPU devices to create (>= 1).

    Returns:
        The logical device names, e.g. `["/device:CPU:0", "/device:CPU:1"]`.

    Example:
        >>> kerastl.split_cpu(2)
        >>> strategy = kerastl.get_strategy("mirrored")  # 2 replicas
    """
    import tensorflow as tf

    check_positive_int("num_devices", num_devices)
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu) or []
    if len(current) != num_devices:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
            )
        except RuntimeError as error:
            existing = len(tf.config.list_logical_devices("CPU"))
            raise RuntimeError(
                f"Cannot split the CPU into {num_devices} devices: TensorFlow has already "
                f"initialized its devices ({existing} logical CPU). Call "
                "`kerastl.split_cpu()` first thing in the program, before any model, tensor "
                f"or strategy is created. Received: num_devices={num_devices}."
            ) from error
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def get_strategy(name: str = "auto", *, devices: list[str] | None = None, tpu: str | None = None):
    """Returns the tf.distribute strategy to train under, and installs the Keras fixes.

    `auto` picks, in order: a TPU when one is found (`TPU_NAME` set, or TPU
    devices present); `multi_worker` when `TF_CONFIG` names a cluster of more
    than one task; `mirrored` over all GPUs when there are several, or over
    logical CPUs when `split_cpu` made several; else `one_device`.

    Args:
        name: one of `auto`, `one_device`, `mirrored`, `multi_worker`, `tpu`,
            `parameter_server` (see the module docstring for what each needs).
        devices: for `mirrored` and `one_device`, the devices to use
            (default: all GPUs, else all logical CPUs; the first for one_device).
        tpu: for `tpu`, the TPU name or address (default: `TPU_NAME`, else
            `"local"` for a TPU VM).

    Returns:
        A `tf.distribute.Strategy`; build, compile and train under its `scope()`.
        `mirrored` returns the same object for the same devices every time: a
        second `MirroredStrategy` in one process breaks the first one's
        collective all-reduces (TF 2.21).

    Example:
        >>> strategy = kerastl.get_strategy()
        >>> with strategy.scope():
        ...     model = kerastl.TransferModel("efficientnet-lite0", num_classes=2)
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy. Expected one of {STRATEGIES}. Received: name={name!r}."
        )
    if name == "auto":
        name = _auto_strategy_name()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy((devices or _local_devices())[0])
    if name == "mirrored":
        chosen = tuple(devices or _local_devices())
        if chosen not in _MIRRORED:
            _MIRRORED[chosen] = tf.distribute.MirroredStrategy(list(chosen))
        return _MIRRORED[chosen]
    if name == "multi_worker":
        _require_cluster("multi_worker", ("worker", "chief"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu)
    _require_cluster("parameter_server", ("ps",))
    warnings.warn(
        "Keras 3's `fit` does not drive ParameterServerStrategy: use it with a custom "
        "training loop and `tf.distribute.coordinator.ClusterCoordinator`.",
        stacklevel=2,
    )
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.ParameterServerStrategy(resolver)


def is_chief(strategy=None) -> bool:
    """Whether this process writes shared outputs: False only on the non-chief
    workers of a multi-worker strategy (they write to temporary places).

    Args:
        strategy: the strategy training runs under (default: the current one).

    Returns:
        True on one device, mirrored, TPU, and on the chief of a cluster.

    Example:
        >>> run_dir = "runs/x" if kerastl.is_chief(strategy) else tempfile.mkdtemp()
    """
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


def global_batch_size(per_replica_batch_size: int, strategy) -> int:
    """The batch size to give the dataset: per-replica batch x replicas in sync.

    Args:
        per_replica_batch_size: examples each replica processes per step.
        strategy: the strategy training runs under.

    Returns:
        The global batch size.

    Example:
        >>> dataset = dataset.batch(kerastl.global_batch_size(32, strategy))
    """
    check_positive_int("per_replica_batch_size", per_replica_batch_size)
    return per_replica_batch_size * strategy.num_replicas_in_sync


def scale_learning_rate(learning_rate: float, strategy, rule: str = "linear") -> float:
    """Scales a learning rate tuned on one replica to the strategy's global batch.

    `linear` (Goyal et al., 2017) multiplies by the number of replicas, as
    the global batch grows by that factor; `sqrt` by its square root (often
    better for Adam); `none` keeps it. Pair a large scaled rate with warm-up.

    Args:
        learning_rate: the rate tuned at one replica's batch size.
        strategy: the strategy training runs under.
        rule: `linear`, `sqrt` or `none`.

    Returns:
        The scaled learning rate.

    Example:
        >>> lr = kerastl.scale_learning_rate(1e-3, strategy)  # 4 GPUs -> 4e-3
    """
    if rule not in LR_SCALING:
        raise ValueError(
            f"Unknown scaling rule. Expected one of {LR_SCALING}. Received: rule={rule!r}."
        )
    replicas = strategy.num_replicas_in_sync
    factor = {"none": 1.0, "linear": float(replicas), "sqrt": math.sqrt(replicas)}[rule]
    return learning_rate * factor


def check_model_in_scope(model: keras.Model, strategy=None) -> None:
    """Raises a clear error if `model`'s variables were not created under `strategy`.

    Keras otherwise fails inside the optimizer with an obscure
    "`colocate_vars_with` must only be passed a variable created in this
    tf.distribute.Strategy.scope()".

    Args:
        model: the model about to be trained.
        strategy: the strategy training runs under (default: the current one).

    Example:
        >>> with strategy.scope():
        ...     kerastl.check_model_in_scope(model)
    """
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        return
    outside = [
        variable.path
        for variable in model.weights
        if not strategy.extended.variable_created_in_scope(_tf_variable(variable))
    ]
    if outside:
        raise ValueError(
            f"Model {model.name!r} was built outside the scope of the {type(strategy).__name__} "
            f"it is trained under: {len(outside)} of its {len(model.weights)} variables (e.g. "
            f"{outside[:3]}) are not distributed. Create the model inside "
            "`with strategy.scope():`, or move it there with `kerastl.to_strategy(model, "
            "strategy)`."
        )


def to_strategy(model: keras.Model, strategy) -> keras.Model:
    """Rebuilds `model` under `strategy.scope()` with the same weights and flags.

    Recompiles it with its compile config (a fresh optimizer) when it was
    compiled. The copy computes in `model`'s precision and a text model keeps
    its tokenizer (`kerastl._rebuild.rebuilt`).

    Args:
        model: a model created outside the strategy's scope.
        strategy: the strategy to train under.

    Returns:
        A new model whose variables belong to `strategy`.

    Example:
        >>> model = kerastl.to_strategy(model, kerastl.get_strategy("mirrored"))
    """
    with strategy.scope():
        copy = rebuilt(model)  # its precision, its tokenizer
        if not copy.built:
            copy.build_from_config(model.get_build_config())
        copy.set_weights(model.get_weights())
        for source, target in zip(_all_layers(model), _all_layers(copy), strict=True):
            target.trainable = source.trainable
        if model.compiled and model.get_compile_config():
            copy.compile_from_config(model.get_compile_config())
    return copy


def _all_layers(model):
    return sublayers(model, include_self=False)


def _tf_variable(variable):
    return getattr(variable, "value", variable)


def _local_devices() -> list[str]:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return [device.name for device in (gpus or tf.config.list_logical_devices("CPU"))]


def _cluster() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}). Received: TF_CONFIG={raw!r}."
        ) from None
    return config.get("cluster", {}) or {}


def _require_cluster(name: str, task_types: tuple[str, ...]) -> None:
    cluster = _cluster()
    if not any(cluster.get(task) for task in task_types):
        raise ValueError(
            f"Strategy {name!r} needs TF_CONFIG naming a cluster with {' or '.join(task_types)} "
            'tasks, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}. '
            f"Received: TF_CONFIG={os.environ.get('TF_CONFIG')!r}."
        )


def _auto_strategy_name() -> str:
    import tensorflow as tf

    if os.environ.get("TPU_NAME") or tf.config.list_physical_devices("TPU"):
        return "tpu"
    cluster = _cluster()
    if sum(len(tasks) for tasks in cluster.values()) > 1:
        return "multi_worker"
    if len(_local_devices()) > 1:
        return "mirrored"
    return "one_device"


def _tpu_strategy(tpu: str | None):
    import tensorflow as tf

    address = tpu or os.environ.get("TPU_NAME") or "local"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        if address != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise RuntimeError(
            f"No TPU found at {address!r} ({str(error).splitlines()[0][:200]}). "
            "On a TPU VM use tpu='local'; elsewhere set "
            f"TPU_NAME or pass the TPU's name or grpc:// address. Received: tpu={tpu!r}."
        ) from error
    return tf.distribute.TPUStrategy(resolver)
