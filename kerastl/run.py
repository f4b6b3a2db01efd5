"""`train(config)`: a whole fine-tuning run from a `RunConfig`.

data → `TransferModel` → `FineTuner` stages → run directory (`config.yaml`,
`history.csv`, plots, best weights, `model.keras`, `report.md`) → SavedModel.
The `kerastl train` command and the recipes are this function with a YAML file.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

import numpy as np

from kerastl._atomic import write_text
from kerastl._quiet import native_stderr_silenced
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
        test: the test data's results (`evaluate_test`), or None.
    """

    run_dir: str
    report: str
    saved_model: str | None
    history: object
    best: tuple[float | None, int | None]
    model: object
    transfer: list[dict] | None = None
    test: dict | None = None


@dataclasses.dataclass
class Data:
    """Batched training, validation and (optional) test data with what is known about it."""

    train: object
    validation: object
    class_names: list[str]
    reports: list = dataclasses.field(default_factory=list)
    test: object = None


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

    from kerastl.distribute import get_strategy, is_chief, set_precision
    from kerastl.finetune import check_monitor, granularity_of

    check_monitor(config.train.monitor, config.train.metrics, validation=True)
    keras.utils.set_random_seed(config.train.seed)
    set_precision(config.train.precision)
    with native_stderr_silenced():  # TF's C++ device start-up lines ("failed call to cuInit")
        strategy = get_strategy(config.train.strategy)
    chief = is_chief(strategy)
    say = _say if chief else (lambda message: None)
    data = load_data(config)
    for report in data.reports:
        if report.one_line():
            say(f"{report.one_line()}: see report.md")
        for note in report.notes:
            say(f"note: {note}")
    with strategy.scope():
        model = build_model(config, data.class_names)
    for stage in config.stages:
        granularity_of(model, stage.train)  # a bad group fails before the run directory exists
    if chief:
        run_dir = _new_run_dir(config.output_dir, config.name)
        _say(f"Run directory: {run_dir}")
    else:  # a non-chief worker trains in step with the chief and writes nothing shared
        run_dir = tempfile.mkdtemp(prefix="kerastl-worker-")
    try:
        return _train_in(config, data, model, strategy, run_dir, say, verbose)
    finally:
        if not chief:
            shutil.rmtree(run_dir, ignore_errors=True)


def _train_in(config: RunConfig, data: Data, model, strategy, run_dir: str, say, verbose):
    write_text(os.path.join(run_dir, "config.yaml"), to_yaml(config))
    tuner = _tuner(config, model, run_dir, verbose, strategy)
    started = time.perf_counter()
    history = tuner.fit(data.train, data.validation, stages=config.stages)
    seconds = time.perf_counter() - started
    sections = [f"## Data\n\n```\n{report.summary()}\n```" for report in data.reports]
    transfer = None
    if config.transfer_report:
        from kerastl.transfer import compare, markdown

        transfer = compare(
            config, data, tuner.recorder, seconds, strategy=strategy, verbose=verbose
        )
        sections.append(markdown(transfer, config.train.monitor))
    test_results = None
    if data.test is not None:
        test_results = evaluate_test(model, data.test, config.train.metrics)
        sections.append(_test_section(test_results))
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
    say(f"Best epoch {best[1]}: {monitored} ({seconds:.0f}s training)")
    say(f"Report: {report}")
    say(f"Plots: {os.path.join(run_dir, 'learning_curves.png')}, confusion_matrix.png")
    if test_results:
        say("Test (once, best epoch's model): " + _format_results(test_results))
    if saved_model:
        say(f"SavedModel: {saved_model}")
    return RunResult(run_dir, report, saved_model, history, best, model, transfer, test_results)


def evaluate_test(model, test, metrics) -> dict[str, float]:
    """The test split's accuracy and balanced accuracy (those of `metrics`), evaluated once.

    Args:
        model: the trained `TransferModel` (best epoch's weights).
        test: batched `(inputs, labels)`.
        metrics: the run's metric names (`accuracy`, `balanced_accuracy`, ...).

    Returns:
        `{name: value}`, e.g. `{"examples": 656, "accuracy": 0.88}`.

    Example:
        >>> evaluate_test(result.model, data.test, ("accuracy",))
    """
    from kerastl.run_directory import accuracy, balanced_accuracy, confusion_matrix

    matrix = confusion_matrix(model, test, model.num_classes)
    scores = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy}
    results = {"examples": int(matrix.sum())}
    results.update({name: scores[name](matrix) for name in metrics if name in scores})
    return results


def _format_results(results: dict) -> str:
    return ", ".join(
        f"{key} = {value:.4f}" if isinstance(value, float) else f"{key} = {value}"
        for key, value in results.items()
    )


def _test_section(results: dict) -> str:
    return (
        "## Test\n\nEvaluated once, after training, with the best epoch's weights: "
        f"{_format_results(results)}."
    )


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


def load_data(config: RunConfig) -> Data:
    """The configured sources, prepared and batched for the configured backbone.

    Training data comes from `data.source`; validation from
    `data.validation_source`, else the TFDS `validation_split`, else a
    stratified `validation_fraction` held out of the training data; test data
    (optional) from `data.test_source` or the TFDS `test_split`. Validation and
    test data are read with the training classes: another label is a bad record.

    Args:
        config: the run configuration.

    Returns:
        A `Data` with batched train/validation(/test) datasets and the class names.
    """
    data = config.data
    kind = data.source.partition(":")[0]
    train_raw, class_names, reports = _read(data.source, config, data.class_names)
    if data.validation_source:
        validation_raw, _, more = _read(data.validation_source, config, class_names)
        reports += more
    elif kind == "tfds":
        validation_raw = _read(data.source, config, class_names, data.validation_split)[0]
    else:
        train_raw, validation_raw = _held_out(train_raw, config)
    test_raw = None
    if data.test_source:
        test_raw, _, more = _read(data.test_source, config, class_names)
        reports += more
    elif kind == "tfds" and data.test_split:
        test_raw = _read(data.source, config, class_names, data.test_split)[0]
    train, validation, test = _batches(config, train_raw, validation_raw, test_raw)
    return Data(train, validation, list(class_names), reports, test)


def _read(source: str, config: RunConfig, class_names, tfds_split: str | None = None):
    """`(unbatched (input, label) pairs, class names, reports)` of one source
    (for TFDS, its `tfds_split`, default the training split)."""
    import kerastl.data as kdata

    kind, _, where = source.partition(":")
    data = config.data
    names = list(class_names) if class_names else None
    if kind == "tfds":
        raw, found = _tfds(config, where, tfds_split or data.train_split)
        return raw, _matching(names, found, source), []
    if kind == "folder":
        size = (config.model.image_size, config.model.image_size)
        raw, found, report = kdata.image_folder(where, size, class_names=names, strict=data.strict)
        return raw, found, [report]
    if kind == "table":
        raw, found, report = kdata.text_table(
            where, text=data.text_key, label=data.label_key, class_names=names, strict=data.strict
        )
        return raw, found, [report]
    if kind == "arrays":
        with np.load(where) as arrays:
            x, y = arrays["x"], arrays["y"]
        found = names or [str(i) for i in range(int(y.max()) + 1)]
        return kdata.from_arrays(x, y, num_classes=len(found)), found, []
    raise ValueError(
        f"A data source must start with tfds:, folder:, table: or arrays:. Received: {source!r}."
    )


def _matching(names, found, source):
    if names is not None and list(names) != list(found):
        raise ValueError(
            f"`data.class_names` must match the classes of {source} in order: {found}. "
            f"Received: class_names={names}."
        )
    return found


def _tfds(config: RunConfig, name: str, split: str):
    import tensorflow_datasets as tfds

    import kerastl.data as kdata

    options = {"data_dir": config.data.data_dir, "manual_dir": config.data.manual_dir}
    raw = kdata.load_tfds(name, split, **options)
    builder = tfds.builder(name, data_dir=config.data.data_dir)
    label = builder.info.supervised_keys[1] if builder.info.supervised_keys else "label"
    return raw, list(builder.info.features[label].names)


def _held_out(raw, config: RunConfig):
    from kerastl.data.builders import stratified_split
    from kerastl.data.sampling import labels_of, select

    _, held_out = stratified_split(
        labels_of(raw), config.data.validation_fraction, seed=config.data.shuffle_seed
    )
    return select(raw, held_out, keep=False), select(raw, held_out)


def _batches(config: RunConfig, train_raw, validation_raw, test_raw=None):
    from kerastl.backbones.hub import create_text_preprocessor
    from kerastl.data.pipeline import batched, prepare_images, text_batches

    data = config.data
    spec = get_spec(config.model.backbone)
    if spec.modality == TEXT:
        weights = config.model.weights
        vocabulary = "default" if weights is None or weights.lower() == "none" else weights
        preprocessor = create_text_preprocessor(spec.name, vocabulary, config.model.sequence_length)
        common = {"bucket": data.bucket_by_length, "seed": data.shuffle_seed}

        def make(raw, **options):
            return text_batches(raw, preprocessor, data.batch_size, **common, **options)

    else:
        size = (config.model.image_size, config.model.image_size)

        def make(raw, **options):
            return batched(
                prepare_images(raw, size), data.batch_size, seed=data.shuffle_seed, **options
            )

    train = make(train_raw, shuffle=True, limit=data.limit)
    validation = make(validation_raw, limit=data.validation_limit)
    test = make(test_raw) if test_raw is not None else None
    return train, validation, test


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
