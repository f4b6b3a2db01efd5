"""Data from a `RunConfig`: the configured sources read, split and batched (the
app layer: the library's data functions it calls take plain arguments).

Training data comes from `data.source`; validation from
`data.validation_source`, else the TFDS `validation_split` if one is named,
else a stratified `validation_fraction` held out of the training data; test
data (optional) from `data.test_source` or the TFDS `test_split`. The
validation data picks the best epoch; the test data is evaluated once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kerastl.app.schema import RunConfig
from kerastl.backbones.registry import get_spec
from kerastl.backbones.spec import TEXT, BackboneSpec
from kerastl.backbones.tokenizers import create_text_preprocessor
from kerastl.data.builders import stratified_split
from kerastl.data.images import image_folder
from kerastl.data.pipeline import batched, from_arrays, prepare_images, text_batches
from kerastl.data.report import DataReport
from kerastl.data.sampling import labels_of, select
from kerastl.data.text import text_table
from kerastl.data.tfds_source import load_tfds


@dataclasses.dataclass
class Data:
    """Batched training, validation and (optional) test data with what is known about it."""

    train: object
    validation: object
    class_names: list[str]
    reports: list = dataclasses.field(default_factory=list)
    test: object = None

    def console_lines(self, listed_in: str | None = None) -> list[str]:
        """What a command says of the data it read: a line per source that
        skipped records, and one per note (a class without images, ...).

        Args:
            listed_in: where the skipped records are listed one by one
                (`kerastl train`: `"report.md"`), added to their line.

        Returns:
            The lines, without the `kerastl: ` prefix.

        Example:
            >>> data.console_lines("report.md")
            ['skipped 1 of 13 records in data/train (1 x corrupt): see report.md']
        """
        lines = []
        for report in self.reports:
            if report.one_line():
                lines.append(report.one_line() + (f": see {listed_in}" if listed_in else ""))
            lines += [f"note: {note}" for note in report.notes]
        return lines


def load_data(
    config: RunConfig,
    spec: BackboneSpec | None = None,
    *,
    tokenize: bool = True,
    verbose: int | str = 0,
) -> Data:
    """The configured sources, prepared and batched for the configured backbone.

    Training data comes from `data.source`; validation from
    `data.validation_source`, else the TFDS `validation_split` if one is
    named, else a stratified `validation_fraction` held out of the training data; test data
    (optional) from `data.test_source` or the TFDS `test_split`. Validation and
    test data are read with the training classes: another label is a bad record.

    Args:
        config: the run configuration.
        spec: the backbone's spec when the caller has it (`resolve(config).spec`).
        tokenize: False: text stays raw strings (batched in order), for a
            caller that tokenizes per backbone (`kerastl rank`).
        verbose: progress of checking an image folder's files, as in
            `kerastl.FineTuner`; 0: silent.

    Returns:
        A `Data` with batched train/validation(/test) datasets and the class names.

    Example:
        >>> data = load_data(load_config("recipes/image_classification.yaml"))
        >>> data.class_names
        ['functional', 'defective']
    """
    data = config.data
    kind = data.source.partition(":")[0]
    train_raw, class_names, reports = _read(data.source, config, data.class_names, verbose=verbose)
    if data.validation_source:
        validation_raw, _, more = _read(
            data.validation_source, config, class_names, verbose=verbose
        )
        reports += more
    elif kind == "tfds" and data.validation_split:
        validation_raw = _read(data.source, config, class_names, data.validation_split)[0]
    else:
        train_raw, validation_raw, held_out = _held_out(train_raw, config, class_names)
        reports += [held_out] if held_out.notes else []
    test_raw = None
    if data.test_source:
        test_raw, _, more = _read(data.test_source, config, class_names, verbose=verbose)
        reports += more
    elif kind == "tfds" and data.test_split:
        test_raw = _read(data.source, config, class_names, data.test_split)[0]
    spec = spec or get_spec(config.model.backbone)
    train, validation, test = _batches(
        config, spec, train_raw, validation_raw, test_raw, tokenize=tokenize
    )
    return Data(train, validation, list(class_names), reports, test)


def _read(
    source: str,
    config: RunConfig,
    class_names,
    tfds_split: str | None = None,
    *,
    verbose: int | str = 0,
):
    """`(unbatched (input, label) pairs, class names, reports)` of one source
    (for TFDS, its `tfds_split`, default the training split)."""
    kind, _, where = source.partition(":")
    data = config.data
    names = list(class_names) if class_names else None
    if kind == "tfds":
        raw, found = _tfds(config, where, tfds_split or data.train_split)
        return raw, _matching(names, found, source), []
    if kind == "folder":
        size = (config.model.image_size, config.model.image_size)
        raw, found, report = image_folder(
            where, size, class_names=names, strict=data.strict, verbose=verbose
        )
        return raw, found, [report]
    if kind == "table":
        raw, found, report = text_table(
            where, text=data.text_key, label=data.label_key, class_names=names, strict=data.strict
        )
        return raw, found, [report]
    if kind == "arrays":
        x, y, found = _arrays(where, names)
        return from_arrays(x, y, num_classes=len(found)), found, []
    raise ValueError(
        f"A data source must start with tfds:, folder:, table: or arrays:. Received: {source!r}."
    )


def _arrays(path: str, names):
    """`(x, integer y, class names)` of an `.npz` with arrays `x` and `y`: integer
    labels (classes `0..max` unless named), or the class names themselves
    (sorted, as a table's, unless named)."""
    with np.load(path) as arrays:
        missing = [key for key in ("x", "y") if key not in arrays.files]
        if missing:
            raise ValueError(
                f"arrays:{path} needs the arrays 'x' (inputs) and 'y' (labels); it has no "
                f"{missing[0]!r}. Its arrays: {sorted(arrays.files)}."
            )
        x, y = arrays["x"], arrays["y"]
    if y.dtype.kind not in "USO":
        return x, y, names or [str(i) for i in range(int(y.max()) + 1 if y.size else 0)]
    labels = [str(label) for label in y.reshape(-1)]
    found = names or sorted(set(labels))
    unknown = sorted(set(labels) - set(found))
    if unknown:
        raise ValueError(
            f"arrays:{path} has labels that are not among data.class_names {found}: {unknown[:5]}."
        )
    index = {name: i for i, name in enumerate(found)}
    return x, np.array([index[label] for label in labels], "int64"), found


def _matching(names, found, source):
    if names is not None and list(names) != list(found):
        raise ValueError(
            f"`data.class_names` must match the classes of {source} in order: {found}. "
            f"Received: class_names={names}."
        )
    return found


def _tfds(config: RunConfig, name: str, split: str):
    import tensorflow_datasets as tfds  # only for TFDS sources: it is slow to import

    options = {"data_dir": config.data.data_dir, "manual_dir": config.data.manual_dir}
    raw = load_tfds(name, split, **options)
    builder = tfds.builder(name, data_dir=config.data.data_dir)
    label = builder.info.supervised_keys[1] if builder.info.supervised_keys else "label"
    return raw, list(builder.info.features[label].names)


def _held_out(raw, config: RunConfig, class_names):
    """`(training, validation, report)`: the stratified `validation_fraction` of
    `raw` held out, the report noting each class too small to give validation an
    example (its validation metrics are undefined)."""
    data = config.data
    labels = labels_of(raw)
    _, held_out = stratified_split(labels, data.validation_fraction, seed=data.shuffle_seed)
    report = DataReport(
        source=f"validation ({data.validation_fraction:g} of {data.source}, stratified)",
        kept=len(held_out),
    )
    totals = np.bincount(labels, minlength=len(class_names))
    validated = np.bincount(labels[held_out], minlength=len(class_names))
    for name, total, count in zip(class_names, totals, validated, strict=True):
        if total and not count:
            report.notes.append(
                f"class {name!r} has {total} example{'s' if total > 1 else ''}, too few to "
                "hold one out for validation: its validation metrics are undefined and "
                "balanced accuracy averages the other classes (add examples, or name a "
                "`data.validation_source`)"
            )
    return select(raw, held_out, keep=False), select(raw, held_out), report


def _batches(config: RunConfig, spec, train_raw, validation_raw, test_raw=None, tokenize=True):
    data = config.data
    if spec.modality == TEXT and not tokenize:

        def make(raw, **options):
            return batched(raw, data.batch_size, seed=data.shuffle_seed, **options)

    elif spec.modality == TEXT:
        weights = config.model.weights
        vocabulary = weights or "default"  # random weights still need a vocabulary
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
    test = make(test_raw, limit=data.test_limit) if test_raw is not None else None
    return train, validation, test
