"""The run configuration's schema: frozen dataclasses with a default for every value.

`RunConfig` holds a whole run (model, data, training, stages, outputs);
`kerastl.app.config` loads one from defaults, a YAML file and `--set`
overrides; `kerastl.app.builders` builds the model and `FineTuner` it names.
"""

from __future__ import annotations

import dataclasses

from kerastl.data.augment import tta_views
from kerastl.training.stage import Stage


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
            `arrays:PATH.npz` (arrays `x`, `y`: integer labels or class names).
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
        calibrate: fit the softmax temperature on the validation data after
            training (`kerastl.calibrate`): probabilities, the test scores and
            the exports are calibrated.
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
    calibrate: bool = True


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
        insight: the report looks at the validation mistakes: per-class
            table, most-confused pairs, `top_losses.png`, `gradcam.png`,
            `calibration.png` (false: only the confusion matrix).
    """

    name: str = "run"
    output_dir: str = "runs"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    stages: tuple[Stage, ...] = dataclasses.field(default_factory=_default_stages)
    transfer_report: bool = False
    export: bool = True
    insight: bool = True
