"""The model and `FineTuner` a `RunConfig` names."""

from __future__ import annotations

from kerastl.app.schema import RunConfig
from kerastl.backbones.registry import get_spec
from kerastl.backbones.spec import TEXT, BackboneSpec
from kerastl.data.augment import augmentation
from kerastl.models import TransferModel
from kerastl.training.finetune import FineTuner


def build_model(
    config: RunConfig,
    class_names: list[str],
    weights: str | None = "config",
    *,
    spec: BackboneSpec | None = None,
) -> TransferModel:
    """The configured `TransferModel` (call inside the strategy's scope).

    Args:
        config: the run configuration.
        class_names: the classes, in label order.
        weights: `"config"` for `config.model.weights`, or an override
            (None: random initialisation, for the from-scratch baseline).
        spec: the backbone's spec when the caller has it (`resolve(config).spec`).

    Returns:
        A `TransferModel`.

    Example:
        >>> model = build_model(config, ["functional", "defective"])
    """
    spec = spec or get_spec(config.model.backbone)
    if weights == "config":
        weights = config.model.weights
    options = {}
    if spec.modality != TEXT:
        options["input_shape"] = (config.model.image_size, config.model.image_size, 3)
    else:
        options["sequence_length"] = config.model.sequence_length
    return TransferModel(
        spec.name,
        len(class_names),
        weights=weights,
        dropout=config.model.dropout,
        pooling=config.model.pooling,
        class_names=class_names,
        **options,
    )


def build_tuner(
    config: RunConfig,
    model: TransferModel,
    strategy,
    *,
    run_dir: str | None = None,
    augment: bool = True,
    verbose: int | str = "auto",
) -> FineTuner:
    """The configured `FineTuner` for `model`.

    Args:
        config: the run configuration (`train` and `data.augment`).
        model: the `TransferModel` it trains.
        strategy: the tf.distribute strategy the model was built under.
        run_dir: the run directory, or None to write nothing.
        augment: apply `data.augment` (the transfer report's baselines do not).
        verbose: Keras progress output.

    Returns:
        A `FineTuner`.
    """
    policy = config.data.augment if augment else ()
    return FineTuner(
        model,
        strategy=strategy,
        cache_features=config.train.cache_features,
        augmentation=augmentation(policy, seed=config.train.seed) if policy else None,
        cache_views=config.train.cache_views if policy else None,
        cache_memory_mb=config.train.cache_memory_mb,
        class_weight=config.train.class_weight,
        metrics=config.train.metrics,
        monitor=config.train.monitor,
        run_dir=run_dir,
        jit_compile=config.train.jit_compile,
        calibrate=config.train.calibrate,
        verbose=verbose,
    )
