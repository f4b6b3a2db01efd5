"""Text classification tables (CSV or JSON Lines) that report bad rows instead of crashing."""

from __future__ import annotations

import collections
import csv
import json
import os
from pathlib import Path

from kerastl.data.report import DataReport

FORMATS = (".csv", ".jsonl")


def text_table(
    path: str | os.PathLike,
    *,
    text: str = "text",
    label: str = "label",
    class_names: list[str] | None = None,
    strict: bool = False,
):
    """Reads `(text, label)` rows from a CSV (with a header) or a JSON Lines file.

    Rows with a missing or empty text or label, or a label outside
    `class_names`, are skipped and named (`file:row`) in the report; a JSONL
    line that is not a JSON object is skipped the same way.

    Args:
        path: a `.csv` or `.jsonl` file.
        text: the text column / key.
        label: the label column / key (class names, not indices).
        class_names: the classes in label order (default: the labels seen, sorted).
        strict: raise `BadRecordError` at the first bad row instead of skipping it.

    Returns:
        `(dataset, class_names, report)`: a `tf.data.Dataset` of
        `(tf.string, int32)` pairs in file order, the class names, the `DataReport`.

    Raises:
        ValueError: another format, or a CSV whose header lacks `text` or `label`.
        FileNotFoundError: no file at `path`.
        BadRecordError: with `strict`, the first bad row.

    Example:
        >>> ds, names, report = kerastl.data.text_table("reviews.csv", label="sentiment")
    """
    import tensorflow as tf

    source = Path(path)
    if source.suffix.lower() not in FORMATS:
        raise ValueError(
            f"Expected a {' or '.join(FORMATS)} file. Received: path={os.fspath(path)!r}."
        )
    if not source.is_file():
        raise FileNotFoundError(f"Text table not found. Received: path={os.fspath(path)!r}.")
    report = DataReport(source=str(source))
    rows = []
    for where, record in _records(source, report, strict, (text, label)):
        value, category = (record.get(text), record.get(label))
        if value is None or not str(value).strip():
            report.reject(where, f"missing field: {text!r} is empty or absent", strict)
        elif category is None or not str(category).strip():
            report.reject(where, f"missing field: {label!r} is empty or absent", strict)
        elif class_names is not None and str(category) not in class_names:
            report.reject(where, f"unknown label: {category!r} not in {list(class_names)}", strict)
        else:
            rows.append((str(value), str(category)))
    names = list(class_names) if class_names is not None else sorted({c for _, c in rows})
    if class_names is None:
        _note_rare_labels(rows, report)
    index = {name: i for i, name in enumerate(names)}
    report.kept = len(rows)
    dataset = tf.data.Dataset.from_tensor_slices(
        (
            tf.constant([t for t, _ in rows], tf.string),
            tf.constant([index[c] for _, c in rows], tf.int32),
        )
    )
    return dataset, names, report


def _note_rare_labels(rows, report: DataReport) -> None:
    """Notes labels far rarer than the others: often a misspelling that became a class."""
    counts = collections.Counter(category for _, category in rows)
    if len(counts) < 2:
        return
    typical = sorted(counts.values())[len(counts) // 2]
    for category, count in sorted(counts.items()):
        if count * 20 < typical:
            report.notes.append(
                f"label {category!r} has {count} row(s), the typical class {typical}: a "
                "misspelling? Pass class_names (kerastl train: data.class_names) to make "
                "other labels bad records"
            )


def _records(source: Path, report: DataReport, strict: bool, columns: tuple[str, str]):
    """`(file:row, dict)` for each record; undecodable JSONL lines go to the report,
    and a CSV whose header lacks one of `columns` (text, label) raises.

    `utf-8-sig`: the byte-order mark Excel writes at the start of a "CSV UTF-8"
    file is dropped (read as UTF-8 it became part of the first column's name).
    """
    with source.open(newline="", encoding="utf-8-sig") as handle:
        if source.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            missing = [name for name in columns if name not in (reader.fieldnames or [])]
            if missing:  # else every row would be skipped, and the table called empty
                raise ValueError(
                    f"{source}: no column {missing[0]!r} in its header; its columns: "
                    f"{reader.fieldnames or []}. Name the text and label columns "
                    "(`text=`/`label=`; kerastl train: data.text_key, data.label_key)."
                )
            for number, row in enumerate(reader, start=2):
                yield f"{source}:{number}", row
            return
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                report.reject(f"{source}:{number}", f"malformed row: {error.msg}", strict)
                continue
            if not isinstance(record, dict):
                report.reject(f"{source}:{number}", "malformed row: not a JSON object", strict)
                continue
            yield f"{source}:{number}", record
