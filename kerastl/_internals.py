"""Every private name of Keras, KerasHub, TensorFlow and TFDS that kerastl uses.

Each accessor says why no public name serves. `tests/test_architecture.py`
calls every one of them on a real object, so a release that removes or
changes one fails there, by name, instead of somewhere inside training.
"""

from __future__ import annotations

import keras


def sublayers(layer: keras.layers.Layer, include_self: bool = True) -> list:
    """Every layer nested in `layer`, depth first. `model.layers` lists only the
    top level, and a KerasHub backbone or a nested model hides its layers there."""
    return list(layer._flatten_layers(include_self=include_self))


def own_trainable_variables(layer: keras.layers.Layer) -> list:
    """The trainable-kind variables a layer creates itself, frozen or not.
    `layer.trainable_weights` is empty for a frozen layer and includes sublayers."""
    return list(layer._trainable_variables)


def own_variables(layer: keras.layers.Layer) -> list:
    """Every weight a layer creates itself (trainable-kind first, in creation
    order: the order of `Layer.save_own_variables`), without its sublayers'."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def seed_generators(layer: keras.layers.Layer) -> list:
    """The layer's own `SeedGenerator`s (Dropout, random augmentation), whose
    state a bit-identical resume must restore; Keras exposes no list of them."""
    return list(getattr(layer, "_seed_generators", []))


def inbound_nodes(operation) -> list:
    """The nodes where `operation` was called: Keras keeps the functional graph
    only here (no public walk of a model's nodes)."""
    return list(operation._inbound_nodes)


def owns_node(model: keras.Model, operation, node) -> bool:
    """Whether `node` (a call of `operation`) belongs to `model`'s graph; a layer
    reused in another model has nodes there too. Keras's key format."""
    key = f"{id(operation)}_ib-{operation._inbound_nodes.index(node)}"
    return key in model._nodes


def producer(tensor):
    """The operation that made a symbolic tensor (`KerasTensor._keras_history`)."""
    return tensor._keras_history.operation


def container_layers(layer: keras.layers.Layer) -> list:
    """The direct sublayers of a container layer, in the order they were
    added (KerasHub's `vit_encoder` holds its transformer blocks so)."""
    return list(layer._layers)


def object_sharing_scope():
    """Keras's scope that makes objects shared in a saved model (one optimizer
    in several `OptimizerMap` entries) load as one object again; `load_model`
    opens it only for its own deserialization, not for a compile config."""
    from keras.src.saving.serialization_lib import ObjectSharingScope

    return ObjectSharingScope()


def timm_efficientnet_config(variant: str) -> dict:
    """KerasHub's EfficientNet architecture for a timm variant (`b0`, `lite0`):
    the same table `from_preset` uses for timm checkpoints, not exported."""
    from keras_hub.src.utils.timm.convert_efficientnet import convert_backbone_config

    return convert_backbone_config({"architecture": f"efficientnet_{variant}"})


def port_timm_efficientnet(backbone: keras.Model, preset: str) -> None:
    """Loads a timm-format EfficientNet preset's tensors into a KerasHub backbone
    built for it, with KerasHub's timm converter (what `from_preset` does after
    building from the preset's architecture name, which it knows for Lite0
    only). The converter reads the repeats from the backbone; Lite's blocks have
    no squeeze-and-excite, as Lite0's entry says."""
    from keras_hub.src.utils.timm.convert_efficientnet import convert_weights
    from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader

    with SafetensorLoader(preset, prefix="") as loader:
        convert_weights(backbone, loader, {"architecture": "efficientnet_lite0"})


def tfds_manual_dir(download_manager) -> str | None:
    """The manual-download folder of a TFDS builder, or None: the public
    `manual_dir` property raises when the folder is missing."""
    return download_manager._manual_dir


def multi_optimizer_variables(optimizer: keras.optimizers.MultiOptimizer) -> list:
    """The variables a built `MultiOptimizer` was built for (its `apply` takes
    them when called with gradients only)."""
    return list(optimizer._trainable_variables)


def optimizer_for(
    optimizer: keras.optimizers.MultiOptimizer, variable
) -> keras.optimizers.Optimizer:
    """The sub-optimizer a `MultiOptimizer` gives `variable` (its `OptimizerMap`)."""
    return optimizer._optimizer_map(variable)


def adam_slots(optimizer: keras.optimizers.Adam, variable) -> tuple:
    """The first and second moment variables Adam keeps for `variable`; Keras
    exposes them only through its own `update_step`, which a fused update replaces."""
    index = optimizer._get_variable_index(variable)
    return optimizer._momentums[index], optimizer._velocities[index]


def decays(optimizer: keras.optimizers.Optimizer, variable) -> bool:
    """Whether `optimizer` applies its weight decay to `variable` (the
    `exclude_from_weight_decay` rules); Keras checks it only inside its own decay step."""
    return optimizer._use_weight_decay(variable)


def ema_pairs(optimizer: keras.optimizers.Optimizer) -> list:
    """`(variable, moving average)` pairs of a built optimizer with `use_ema`
    (of each sub-optimizer of a `MultiOptimizer`); Keras only exposes them by
    overwriting the variables for good (`finalize_variable_values`)."""
    inner = getattr(optimizer, "optimizers", None) or [optimizer]
    return [
        (variable, average)
        for each in inner
        if each.use_ema and each.built
        for variable, average in zip(
            each._trainable_variables, each._model_variables_moving_average, strict=True
        )
        if average is not None
    ]


def symbolic_build(model: keras.Model, data_batch) -> None:
    """Builds a model's metrics and optimizer from one batch, or from symbolic
    tensors shaped like one (what `fit` does under a strategy on its first batch)."""
    model._symbolic_build(data_batch=data_batch)


def trainer_strategy(model: keras.Model):
    """The strategy Keras's TF trainer recorded for `model` (None: the default
    strategy, under which Keras builds on the first traced step instead)."""
    return model._distribute_strategy


def epoch_dataset(epoch_iterator):
    """The `tf.data.Dataset` a Keras `TFEpochIterator` serves batches from."""
    return epoch_iterator.data_adapter.get_tf_dataset()


def tensorflow_trainer():
    """Keras's TensorFlow trainer module: the multi-worker fix overrides its
    `TensorFlowTrainer._maybe_symbolic_build` on kerastl's models, and puts a
    dispatcher before its module-level `reduce_per_replica` that only their
    multi-worker `fit`/`evaluate` use (see `kerastl.distribute.keras_fixes`)."""
    from keras.src.backend.tensorflow import trainer

    return trainer


def tensorflow_nn():
    """Keras's TensorFlow backend `nn` module, whose `conv` every convolution
    layer calls: an export swaps it while tracing, for grouped convolutions
    without XLA (`kerastl.export.keras_export_fixes`); no public hook exists."""
    from keras.src.backend.tensorflow import nn

    return nn
