"""`train(config)`: a whole fine-tuning run from a `RunConfig`.

data → `TransferModel` → `FineTuner` stages → run directory (`config.yaml`,
`history.csv`, plots, best weights, `model.keras`, `report.md`) → SavedModel.
The `kerastl train` command and the recipes are this function with a YAML file.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from kerastl.backbones.registry import get_spec
from kerastl.backbones.spec import TEXT
from kerastl.config import RunConfig, to_yaml


@dataclasses.dataclass
class RunResult:
    """What a run produced.

    Args:
        run_dir: the run directory.
        report: path of `report.md`.
        saved_model: path of the exported SavedModel, or None.
        history: the Keras `History` over all stages.
        best: the best monitored value and its epoch.
        model: the trained `TransferModel` (best epoch's weights).
        transfer: the transfer report's rows, or None.
    """

    run_dir: str
    report: str
    saved_model: str | None
    history: object
    best: tuple[float | None, int | None]
    model: object
    transfer: list[dict] | None = None


@dataclasses.dataclass
class Data:
    """Batched training and validation data with what is known about it."""

    train: object
    validation: object
    class_names: list[str]
    reports: list = dataclasses.field(default_factory=list)


def train(config: RunConfig, *, verbose: int | str = "auto") -> RunResult:
    """Runs the configured fine-tuning and writes the run directory.

    Args:
        config: a `RunConfig` (see `kerastl.config.load_config`).
        verbose: Keras progress output (0: only the final summary lines).

    Returns:
        A `RunResult`.

    Example:
        >>> from kerastl.config import load_config
        >>> result = train(load_config("recipes/image_classification.yaml"))
        >>> print(open(result.report).read())
    """
    import keras

    from kerastl.distribute import get_strategy, set_precision
    from kerastl.finetune import check_monitor, granularity_of

    check_monitor(config.train.monitor, config.train.metrics, validation=True)
    keras.utils.set_random_seed(config.train.seed)
    set_precision(config.train.precision)
    strategy = get_strategy(config.train.strategy)
    data = load_data(config)
    with strategy.scope():
        model = build_model(config, data.class_names)
    for stage in config.stages:
        granularity_of(model, stage.train)  # a bad group fails before the run directory exists
    run_dir = _new_run_dir(config.output_dir, config.name)
    with open(os.path.join(run_dir, "config.yaml"), "w") as file:
        file.write(to_yaml(config))
    _say(f"Run directory: {run_dir}")
    tuner = _tuner(config, model, run_dir, verbose, strategy)
    started = time.perf_counter()
    history = tuner.fit(data.train, data.validation, stages=config.stages)
    seconds = time.perf_counter() - started
    sections = [f"## Data\n\n```\n{report.summary()}\n```" for report in data.reports]
    transfer = None
    if config.transfer_report:
        from kerastl.transfer import compare, markdown

        transfer = compare(config, data, tuner.recorder, seconds, verbose=verbose)
        sections.append(markdown(transfer, config.train.monitor))
    report = tuner.write_report(
        data.validation, title=f"{config.name}: {config.model.backbone}", extra_sections=sections
    )
    saved_model = None
    if config.export:
        from kerastl.export import saved_model as export_saved_model

        saved_model = export_saved_model(
            model, os.path.join(run_dir, "saved_model"), samples=data.validation
        )
    best = (tuner.recorder.best, tuner.recorder.best_epoch)
    monitored = f"{config.train.monitor} = {_fmt(best[0])}"
    _say(f"Best epoch {best[1]}: {monitored} ({seconds:.0f}s training)")
    _say(f"Report: {report}")
    _say(f"Plots: {os.path.join(run_dir, 'learning_curves.png')}, confusion_matrix.png")
    if saved_model:
        _say(f"SavedModel: {saved_model}")
    return RunResult(run_dir, report, saved_model, history, best, model, transfer)


def lr_find_for_config(config: RunConfig):
    """The LR range test for the first stage's setup, its plot in the run directory.

    Args:
        config: the run configuration (its first stage says what trains).

    Returns:
        `(LRFindResult, plot path)`.

    Example:
        >>> result, plot = lr_find_for_config(load_config("recipes/image_classification.yaml"))
    """
    import keras

    from kerastl.finetune import set_stage_trainable
    from kerastl.lr_finder import lr_find

    keras.utils.set_random_seed(config.train.seed)
    data = load_data(config)
    model = build_model(config, data.class_names)
    set_stage_trainable(model, config.stages[0])
    model.compile(
        keras.optimizers.Adam(config.stages[0].lr),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    run_dir = _new_run_dir(config.output_dir, f"{config.name}-lr-find")
    plot = os.path.join(run_dir, "lr_find.png")
    return lr_find(model, data.train.repeat(), plot_path=plot), plot


def build_model(config: RunConfig, class_names: list[str], weights: str | None = "config"):
    """The configured `TransferModel` (call inside the strategy's scope).

    Args:
        config: the run configuration.
        class_names: the classes, in label order.
        weights: `"config"` for `config.model.weights`, or an override
            (None: random initialisation, for the from-scratch baseline).

    Returns:
        A `TransferModel`.
    """
    from kerastl.models import TransferModel

    spec = get_spec(config.model.backbone)
    if weights == "config":
        weights = config.model.weights
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    options = {}
    if spec.modality != TEXT:
        options["input_shape"] = (config.model.image_size, config.model.image_size, 3)
    return TransferModel(
        spec.name,
        len(class_names),
        weights=weights,
        dropout=config.model.dropout,
        pooling=config.model.pooling,
        class_names=class_names,
        **options,
    )


def load_data(config: RunConfig) -> Data:
    """The configured source, prepared and batched for the configured backbone.

    Args:
        config: the run configuration.

    Returns:
        A `Data` with batched train/validation datasets and the class names.
    """
    import kerastl.data as kdata

    source = config.data.source
    kind, _, where = source.partition(":")
    reports = []
    if kind == "tfds":
        train_raw, validation_raw, class_names = _tfds(config, where)
    elif kind == "folder":
        size = (config.model.image_size, config.model.image_size)
        raw, class_names, report = kdata.image_folder(where, size, strict=config.data.strict)
        reports.append(report)
        train_raw, validation_raw = _held_out(raw, config)
    elif kind == "table":
        raw, class_names, report = kdata.text_table(
            where,
            text=config.data.text_key,
            label=config.data.label_key,
            strict=config.data.strict,
        )
        reports.append(report)
        train_raw, validation_raw = _held_out(raw, config)
    elif kind == "arrays":
        with np.load(where) as arrays:
            x, y = arrays["x"], arrays["y"]
        class_names = [str(i) for i in range(int(y.max()) + 1)]
        raw = kdata.from_arrays(x, y)
        train_raw, validation_raw = _held_out(raw, config)
    else:
        raise ValueError(
            "`data.source` must start with tfds:, folder:, table: or arrays:. "
            f"Received: data.source={source!r}."
        )
    train, validation = _batches(config, train_raw, validation_raw)
    return Data(train, validation, list(class_names), reports)


def _tfds(config: RunConfig, name: str):
    import tensorflow_datasets as tfds

    import kerastl.data as kdata

    options = {"data_dir": config.data.data_dir, "manual_dir": config.data.manual_dir}
    train = kdata.load_tfds(name, config.data.train_split, **options)
    validation = kdata.load_tfds(name, config.data.validation_split, **options)
    builder = tfds.builder(name, data_dir=config.data.data_dir)
    label = builder.info.supervised_keys[1] if builder.info.supervised_keys else "label"
    return train, validation, list(builder.info.features[label].names)


def _held_out(raw, config: RunConfig):
    import tensorflow as tf

    from kerastl.data.builders import stratified_split

    labels = np.array([int(y) for y in raw.map(lambda x, y: y).as_numpy_iterator()])
    _, held_out = stratified_split(
        labels, config.data.validation_fraction, seed=config.data.shuffle_seed
    )
    mask = np.zeros(len(labels), bool)
    mask[held_out] = True
    mask = tf.constant(mask)

    def part(validation: bool):
        chosen = raw.enumerate().filter(lambda i, _: tf.gather(mask, i) == validation)
        return chosen.map(lambda _, example: example)

    return part(False), part(True)


def _batches(config: RunConfig, train_raw, validation_raw):
    from kerastl.backbones.hub import create_text_preprocessor
    from kerastl.data.pipeline import batched, prepare_images, text_batches

    data = config.data
    spec = get_spec(config.model.backbone)
    if spec.modality == TEXT:
        weights = config.model.weights
        vocabulary = "default" if weights is None or weights.lower() == "none" else weights
        preprocessor = create_text_preprocessor(spec.name, vocabulary, config.model.sequence_length)
        common = {"bucket": data.bucket_by_length, "seed": data.shuffle_seed}
        train = text_batches(
            train_raw, preprocessor, data.batch_size, shuffle=True, limit=data.limit, **common
        )
        validation = text_batches(
            validation_raw, preprocessor, data.batch_size, limit=data.validation_limit, **common
        )
        return train, validation
    size = (config.model.image_size, config.model.image_size)
    train = batched(
        prepare_images(train_raw, size),
        data.batch_size,
        shuffle=True,
        seed=data.shuffle_seed,
        limit=data.limit,
    )
    validation = batched(
        prepare_images(validation_raw, size), data.batch_size, limit=data.validation_limit
    )
    return train, validation


def _tuner(config: RunConfig, model, run_dir, verbose, strategy):
    from kerastl.data.pipeline import augmentation
    from kerastl.finetune import FineTuner

    augment = (
        augmentation(config.data.augment, seed=config.train.seed) if config.data.augment else None
    )
    return FineTuner(
        model,
        strategy=strategy,
        cache_features=config.train.cache_features,
        augmentation=augment,
        cache_memory_mb=config.train.cache_memory_mb,
        class_weight=config.train.class_weight,
        metrics=config.train.metrics,
        monitor=config.train.monitor,
        run_dir=run_dir,
        jit_compile=config.train.jit_compile,
        verbose=verbose,
    )


def _new_run_dir(output_dir: str, name: str) -> str:
    """`output_dir/name`, or `name-2`, `name-3`... : an earlier run is never overwritten."""
    base = os.path.join(output_dir, name)
    path, number = base, 1
    while os.path.exists(path) and os.listdir(path):
        number += 1
        path = f"{base}-{number}"
    os.makedirs(path, exist_ok=True)
    return path


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _say(message: str) -> None:
    print(f"kerastl: {message}", flush=True)
