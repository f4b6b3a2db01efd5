"""Run configuration: frozen dataclasses, layered defaults → YAML → `--set`.

Every value has a default; a YAML file overrides some, and `--set
key.path=value` overrides those (values are parsed as YAML: `3`, `1e-4`,
`null`, `[flip, rotate]`). An unknown key is an error naming the nearest
valid key; a value of the wrong type is an error naming the key, the value
and the type expected. `to_yaml` writes the fully resolved configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from kerastl._atomic import write_text
from kerastl.backbones.registry import get_spec
from kerastl.backbones.spec import TEXT
from kerastl.data.augment import augmentation, tta_views
from kerastl.models import TransferModel
from kerastl.training.finetune import FineTuner, Stage


class ConfigError(ValueError):
    """A configuration key or value is invalid."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network.

    Args:
        backbone: a registry name (`kerastl list-backbones`).
        weights: `default`, `none` (random initialisation; resolved to null), `imagenet`,
            a preset, an asset or a local path.
        image_size: square input size for image backbones.
        sequence_length: maximum tokens for text backbones.
        dropout: dropout before the head.
        pooling: None (the backbone's default) or `avg`, `max`, `cls`, `mean`, `pooled`.
    """

    backbone: str = "efficientnet-lite0"
    weights: str | None = "default"
    image_size: int = 128
    sequence_length: int = 64
    dropout: float = 0.2
    pooling: str | None = None

    def __post_init__(self):
        if isinstance(self.weights, str) and self.weights.lower() == "none":
            object.__setattr__(self, "weights", None)  # random initialisation


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they are batched.

    Args:
        source: `tfds:NAME` (e.g. `tfds:elpv`), `folder:PATH` (one sub-folder
            per class), `table:PATH` (`.csv`/`.jsonl` text + label) or
            `arrays:PATH.npz` (arrays `x`, `y`).
        validation_source: validation data from another folder, table or
            arrays file (same forms as `source`), read with the training
            classes; default: the TFDS `validation_split` if given, else a
            stratified `validation_fraction` held out of the training data.
        test_source: test data (same forms), evaluated once after training.
        class_names: the classes in label order for folders and tables
            (default: the sub-folders or labels found, sorted); a label
            outside them is a bad record.
        train_split: TFDS split for training.
        validation_split: TFDS split for validation (default: none, a
            fraction of the training split is held out). Never the test split.
        test_split: TFDS split evaluated once after training (default: none).
        validation_fraction: held-out fraction (stratified, seeded) of the
            training data, when no validation source or split is given.
        data_dir: TFDS `data_dir`.
        manual_dir: TFDS `manual_dir` (files placed by hand when offline).
        text_key: text column of a table.
        label_key: label column of a table.
        batch_size: examples per batch.
        shuffle_seed: seed of the training shuffle and the held-out split.
        limit: use N training examples (quick runs), each class keeping its
            share, drawn after a shuffle seeded with `shuffle_seed`.
        validation_limit: the same for validation examples.
        test_limit: the same for test examples (quick runs; the reported
            test scores are then on that sample only).
        augment: an augmentation policy (`light`, `orientation_free`,
            `natural`) or a list of augmentations (`flip`, `dihedral`, ...;
            `kerastl.data.augmentation`), training inputs only.
        tta: test-time views whose probabilities are averaged for the test
            scores, reported beside the plain ones: `none`, `flip` or `dihedral`.
        bucket_by_length: batch texts of similar length together.
        strict: stop at the first bad record instead of skipping it.
    """

    source: str = "tfds:elpv"
    validation_source: str | None = None
    test_source: str | None = None
    class_names: tuple[str, ...] | None = None
    train_split: str = "train"
    validation_split: str | None = None
    test_split: str | None = None
    validation_fraction: float = 0.25
    data_dir: str | None = None
    manual_dir: str | None = None
    text_key: str = "text"
    label_key: str = "label"
    batch_size: int = 32
    shuffle_seed: int = 0
    limit: int | None = None
    validation_limit: int | None = None
    test_limit: int | None = None
    augment: tuple[str, ...] = ()
    tta: str = "none"
    bucket_by_length: bool = True
    strict: bool = False

    def __post_init__(self):
        if self.validation_split is not None and self.validation_split == self.test_split:
            raise ValueError(
                "The validation split picks the best epoch, so it cannot be the test split "
                "(the test score would be chosen on itself). Leave `validation_split` unset "
                "to hold out `validation_fraction` of the training data. Received: "
                f"validation_split={self.validation_split!r}, test_split={self.test_split!r}."
            )
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                "`validation_fraction` must be in (0, 1). "
                f"Received: validation_fraction={self.validation_fraction!r}."
            )
        tta_views(self.tta)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How training runs.

    Args:
        strategy: `auto`, `one_device`, `mirrored`, `multi_worker` or `tpu`.
        precision: `float32`, `mixed_float16` or `mixed_bfloat16`.
        seed: the global random seed.
        cache_features: null (cache when possible), true or false.
        cache_views: with `data.augment`, cache the frozen features of this
            many fixed views per training example (8 with `orientation_free`:
            the exact dihedral views), one served per example each epoch.
        cache_memory_mb: cached features beyond this go to disk.
        class_weight: `balanced` (inverse frequency) or null.
        metrics: logged metrics (`accuracy`, `balanced_accuracy`, ...).
        monitor: the value that picks the best epoch, restored at the end.
        jit_compile: XLA-compile the training step (`auto`: Keras decides).
    """

    strategy: str = "auto"
    precision: str = "float32"
    seed: int = 0
    cache_features: bool | None = None
    cache_views: int | None = None
    cache_memory_mb: float = 1024.0
    class_weight: str | None = "balanced"
    metrics: tuple[str, ...] = ("accuracy", "balanced_accuracy")
    monitor: str = "val_balanced_accuracy"
    jit_compile: bool | str = "auto"


def _default_stages() -> tuple[Stage, ...]:
    return (
        Stage(5, train="head", lr=3e-3),
        Stage(4, train="block6", lr=3e-4, lr_mult=3, warmup=0.25),
    )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run: model, data, training, stages, outputs.

    Args:
        name: the run's name (its directory under `output_dir`).
        output_dir: where run directories are created.
        model: `ModelConfig`.
        data: `DataConfig`.
        train: `TrainConfig`.
        stages: the `Stage`s, in order (YAML: a list of mappings).
        transfer_report: also train a linear probe and a from-scratch
            network with the same epochs, and compare.
        export: write a SavedModel of the final model.
    """

    name: str = "run"
    output_dir: str = "runs"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    stages: tuple[Stage, ...] = dataclasses.field(default_factory=_default_stages)
    transfer_report: bool = False
    export: bool = True


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Defaults, then the YAML file at `path`, then `key.path=value` overrides.

    Args:
        path: a YAML file, or None for the defaults.
        overrides: strings like `"stages.1.lr=1e-4"` or `"data.limit=64"`.

    Returns:
        The resolved `RunConfig`.

    Raises:
        ConfigError: an unknown key (naming the nearest valid one) or a bad value.

    Example:
        >>> config = load_config("recipes/image_classification.yaml", ["model.image_size=96"])
    """
    values = to_dict(RunConfig())
    if path is not None:
        with open(path) as file:
            loaded = yaml.safe_load(file) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{os.fspath(path)}: expected a mapping at the top level.")
        _merge(values, loaded, "")
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"--set expects key=value. Received: {override!r}.")
        _set(values, key.strip().split("."), yaml.safe_load(text), key.strip())
    return _build(RunConfig, values, "")


def to_dict(config) -> dict:
    """A config as plain YAML-ready data (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def to_yaml(config: RunConfig) -> str:
    """The fully resolved configuration as YAML (loads back with `load_config`)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_config(config: RunConfig, run_dir: str | os.PathLike) -> str:
    """Writes the resolved configuration into a run directory as `config.yaml`.

    Every run directory has one, whoever wrote it (`kerastl train`, a recipe
    script): `kerastl train --resume` and `kerastl export` read it.

    Args:
        config: the run's `RunConfig`.
        run_dir: the run directory.

    Returns:
        The path written (atomically).

    Example:
        >>> save_config(config, "runs/elpv-lite0")
        'runs/elpv-lite0/config.yaml'
    """
    from kerastl.training.run_directory import CONFIG

    path = os.path.join(os.fspath(run_dir), CONFIG)
    write_text(path, to_yaml(config))
    return path


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _merge(target: dict, source: dict, prefix: str) -> None:
    for key, value in source.items():
        where = f"{prefix}{key}"
        if key not in target:
            raise ConfigError(_unknown(key, list(target), where))
        if isinstance(target[key], dict) and isinstance(value, dict):
            _merge(target[key], value, where + ".")
        else:
            target[key] = value


def _set(values, keys: list[str], value, where: str) -> None:
    node, in_list = values, False
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    f"{where}: {key!r} is not an index of a list of {len(node)}. "
                    f"Expected 0..{len(node) - 1}."
                )
            key = int(key)
        elif isinstance(node, dict) and in_list and last:
            pass  # a list item (a stage) may omit keys; `_build` checks the name
        elif not isinstance(node, dict) or key not in node:
            valid = list(node) if isinstance(node, dict) else []
            raise ConfigError(_unknown(key, valid, where))
        if last:
            node[key] = value
        else:
            in_list = isinstance(node, list)
            node = node[key]


def _unknown(key: str, valid: list[str], where: str) -> str:
    near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.4)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    return f"Unknown config key {where!r}.{hint} Valid keys here: {valid}."


def _build(cls, values, prefix: str):
    if not isinstance(values, dict):
        where = prefix.rstrip(".") or "config"
        raise ConfigError(f"{where}: expected a mapping. Received: {values!r}.")
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(_unknown(key, names, f"{prefix}{key}"))
    arguments = {key: _coerce(value, hints[key], f"{prefix}{key}") for key, value in values.items()}
    try:
        return cls(**arguments)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {error}") from None


def _coerce(value, hint, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list. Received: {value!r}.")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(v, item, f"{where}.{i}") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return _build(hint, value, f"{where}.")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false. Received: {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer. Received: {value!r}.")
        return value
    if hint is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)  # YAML reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number. Received: {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string. Received: {value!r}.")
        return value
    return value


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
    spec = get_spec(config.model.backbone)
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
        verbose=verbose,
    )


def recipe_command_line(
    path: str | os.PathLike, argv: Sequence[str] | None = None
) -> tuple[RunConfig, int | str]:
    """A recipe script's command line: its YAML with `--set KEY=VALUE` overrides.

    Args:
        path: the recipe's YAML file.
        argv: the arguments (default: `sys.argv[1:]`): `--set KEY=VALUE`
            (repeatable) and `--quiet` (no per-epoch progress).

    Returns:
        `(config, verbose)`: the resolved `RunConfig` and the verbosity: 0
        with `--quiet`, else `"auto"` (progress bars on a terminal, a line
        per epoch in a log).

    Example:
        >>> config, verbose = recipe_command_line("recipes/image_classification.yaml")
    """
    import argparse

    parser = argparse.ArgumentParser(description=f"The recipe configured by {path}.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    args = parser.parse_args(argv)
    return load_config(path, args.set), 0 if args.quiet else "auto"
