"""What a trained classifier gets wrong, from one pass over labelled data.

`look(model, validation)` keeps every example's logits and label, and the
inputs of the examples with the highest loss (and of a few right ones): the
confusion matrix, per-class precision/recall/F1, the most-confused pairs,
the top losses and the calibration before and after the model's temperature
all come from that pass. `markdown` writes the report's sections; the
figures (`top_losses.png`, `gradcam.png`, `calibration.png`) are drawn by
`kerastl.training.insight_plots`.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Sequence

import keras
import numpy as np

from kerastl._progress import Progress
from kerastl.training.calibration import expected_calibration_error, softmax
from kerastl.training.inference import traced_inference

TOP_LOSSES = 8
RIGHT_EXAMPLES = 4


@dataclasses.dataclass
class Example:
    """One example kept for the report.

    Args:
        index: its place in the data (from 0).
        inputs: the image `[H, W, 3]` or the text.
        label: the true class.
        predicted: the predicted class.
        probability: the (calibrated) probability of the predicted class.
        loss: cross-entropy of the true class (calibrated).
    """

    index: int
    inputs: object
    label: int
    predicted: int
    probability: float
    loss: float


@dataclasses.dataclass
class Look:
    """A model's logits on labelled data, and the examples worth looking at.

    Args:
        logits: `[n, classes]` raw logits.
        labels: `[n]` true classes.
        class_names: a name per class.
        temperature: the model's softmax temperature.
        top_losses: the highest-loss examples, highest first.
        right: a few correctly classified examples (the most confident).
    """

    logits: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    temperature: float
    top_losses: list[Example]
    right: list[Example]

    @property
    def probabilities(self) -> np.ndarray:
        """Calibrated probabilities (`softmax(logits / temperature)`)."""
        return softmax(self.logits / self.temperature)

    @property
    def matrix(self) -> np.ndarray:
        """The confusion matrix, rows the true class."""
        classes = self.logits.shape[1]
        matrix = np.zeros((classes, classes), np.int64)
        np.add.at(matrix, (self.labels, self.logits.argmax(axis=1)), 1)
        return matrix

    def ece(self, temperature: float | None = None) -> float:
        """Expected calibration error (15 bins) at `temperature` (default the model's)."""
        scaled = self.logits / (self.temperature if temperature is None else temperature)
        return expected_calibration_error(softmax(scaled), self.labels)


def look(
    model: keras.Model,
    dataset,
    *,
    top: int = TOP_LOSSES,
    right: int = RIGHT_EXAMPLES,
    verbose: int | str = 0,
) -> Look:
    """Reads `dataset` once: logits, labels, the top losses and a few right examples.

    Args:
        model: a single-label classifier producing logits (a `TransferModel`;
            its `temperature` calibrates the probabilities).
        dataset: batches of `(inputs, integer labels)` (a text model's raw
            strings or token inputs).
        top: how many of the highest-loss examples to keep.
        right: how many correctly classified examples to keep.
        verbose: progress (`kerastl._progress`).

    Returns:
        A `Look`.

    Example:
        >>> seen = look(model, val_ds)
        >>> [(e.label, e.predicted, round(e.probability, 2)) for e in seen.top_losses[:2]]
        [(1, 0, 0.97), (0, 1, 0.91)]
    """
    import tensorflow as tf

    if hasattr(model, "prepare_data"):
        dataset = model.prepare_data(dataset)
    temperature = float(getattr(model, "temperature", 1.0))
    run = traced_inference(model, dataset.element_spec[0])
    progress = Progress("looking at the validation errors", int(dataset.cardinality()), verbose)
    logits, labels, worst, best, seen = [], [], [], [], 0
    for step, (inputs, batch_labels, *_) in enumerate(dataset.prefetch(tf.data.AUTOTUNE), 1):
        batch_logits = keras.ops.convert_to_numpy(keras.tree.flatten(run(inputs))[0])
        batch_labels = np.asarray(batch_labels).reshape(-1).astype(np.int64)
        probabilities = softmax(batch_logits.astype(np.float64) / temperature)
        losses = -np.log(
            np.maximum(probabilities[np.arange(len(batch_labels)), batch_labels], 1e-300)
        )
        for row, loss in enumerate(losses):
            key = (float(loss), -(seen + row))  # ties: the earlier example
            _keep(worst, top, key, (inputs, row, seen + row))
            if probabilities[row].argmax() == batch_labels[row]:
                _keep(
                    best,
                    right,
                    (float(probabilities[row].max()), -(seen + row)),
                    (inputs, row, seen + row),
                )
        logits.append(batch_logits)
        labels.append(batch_labels)
        seen += len(batch_labels)
        progress.update(step)
    progress.finish()
    if not logits:
        raise ValueError("Cannot look at an empty dataset.")
    result = Look(
        np.concatenate(logits).astype(np.float64),
        np.concatenate(labels),
        _names(model, batch_logits.shape[1]),
        temperature,
        [],
        [],
    )
    result.top_losses = [_example(model, result, kept) for kept in sorted(worst, reverse=True)]
    result.right = [_example(model, result, kept) for kept in sorted(best, reverse=True)]
    return result


def class_table(matrix: np.ndarray, names: Sequence[str]) -> list[str]:
    """Per-class precision, recall, F1 and support, as Markdown table lines.

    Example:
        >>> class_table(np.array([[8, 2], [1, 9]]), ["ok", "defect"])[2]
        '| ok | 0.889 | 0.800 | 0.842 | 10 |'
    """
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    lines = ["| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for index, name in enumerate(names):
        hit = matrix[index, index]
        precision = hit / predicted[index] if predicted[index] else float("nan")
        recall = hit / support[index] if support[index] else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        lines.append(
            f"| {name} | {precision:.3f} | {recall:.3f} | {f1:.3f} | {int(support[index])} |"
        )
    return lines


def most_confused(matrix: np.ndarray, names: Sequence[str], count: int = 5):
    """The `(true, predicted, how many)` pairs most often confused, most first.

    Example:
        >>> most_confused(np.array([[8, 2], [5, 5]]), ["ok", "defect"])
        [('defect', 'ok', 5), ('ok', 'defect', 2)]
    """
    pairs = [
        (int(matrix[t, p]), t, p)
        for t in range(len(matrix))
        for p in range(len(matrix))
        if t != p and matrix[t, p]
    ]
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    return [(names[t], names[p], n) for n, t, p in pairs[:count]]


def markdown(seen: Look, title: str = "Validation") -> str:
    """The report's sections: per-class table, most-confused pairs, calibration,
    and the top losses (a table of the texts for a text model).

    Example:
        >>> print(markdown(look(model, val_ds)))
    """
    names = seen.class_names
    matrix = seen.matrix
    lines = [f"## {title}: what the model gets wrong", "", *class_table(matrix, names), ""]
    confused = most_confused(matrix, names)
    if confused:
        lines += ["Most confused (true -> predicted: examples):", ""]
        lines += [f"- {t} -> {p}: {n}" for t, p, n in confused]
        lines.append("")
    before, after = seen.ece(1.0), seen.ece()
    lines += [
        f"Calibration: expected calibration error (15 bins) {before:.4f} with the raw "
        f"softmax, {after:.4f} at temperature {seen.temperature:.3g} "
        "(`calibration.png`; the temperature is fitted on this split and saved in the model).",
        "",
    ]
    if seen.top_losses and isinstance(seen.top_losses[0].inputs, str):
        lines += [
            "Highest losses:",
            "",
            "| true | predicted | p | text |",
            "| --- | --- | --- | --- |",
        ]
        for example in seen.top_losses:
            text = example.inputs.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {names[example.label]} | {names[example.predicted]} | "
                f"{example.probability:.2f} | {text} |"
            )
    else:
        look_at = ", ".join(
            f"#{e.index} {names[e.label]} -> {names[e.predicted]} {e.probability:.2f}"
            for e in seen.top_losses
        )
        lines.append(
            "Look at these first, the highest losses (example number in this split: true -> "
            f"predicted, p): {look_at}. `top_losses.png` shows them, `gradcam.png` where "
            "the model looked."
        )
    return "\n".join(lines)


def _keep(heap: list, size: int, key: tuple, item: tuple) -> None:
    """Keeps the `size` largest keys; the inputs are copied only when kept."""
    if size <= 0:
        return
    inputs, row, index = item
    if len(heap) < size:
        heapq.heappush(heap, (key, index, _row(inputs, row)))
    elif key > heap[0][0]:
        heapq.heapreplace(heap, (key, index, _row(inputs, row)))


def _row(inputs, row: int):
    return keras.tree.map_structure(lambda tensor: np.asarray(tensor[row]), inputs)


def _example(model, seen: Look, kept) -> Example:
    _, index, inputs = kept
    probabilities = seen.probabilities[index]
    label, predicted = int(seen.labels[index]), int(probabilities.argmax())
    if isinstance(inputs, dict) and getattr(model, "preprocessor", None) is not None:
        from kerastl.export.samples import detokenized

        batch = {name: value[None] for name, value in inputs.items()}
        inputs = detokenized(model.preprocessor, batch)[0]
    return Example(
        index,
        inputs,
        label,
        predicted,
        float(probabilities[predicted]),
        float(-np.log(max(probabilities[label], 1e-300))),
    )


def _names(model, classes: int) -> list[str]:
    names = getattr(model, "class_names", None)
    return (
        [str(n) for n in names]
        if names and len(names) == classes
        else [str(i) for i in range(classes)]
    )
