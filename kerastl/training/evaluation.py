"""Scores of a trained classifier on labelled data, plain and with test-time augmentation.

`evaluate` reads the data once: each batch is classified as it is and, with
`tta`, under each test-time view (`kerastl.data.tta_views`), the views'
softmax probabilities averaged. Both confusion matrices come from that one
pass, so a test split is touched exactly once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np

from kerastl._progress import Progress
from kerastl.data.augment import dihedral_view, tta_views
from kerastl.training.calibration import expected_calibration_error, softmax
from kerastl.training.inference import traced_inference
from kerastl.training.insight import class_table, most_confused
from kerastl.training.run_directory import accuracy, balanced_accuracy, matrix_table


@dataclasses.dataclass
class Scores:
    """Accuracy, balanced accuracy and per-class recall of one confusion matrix.

    Args:
        matrix: `[classes, classes]` counts, rows the true class.
        class_names: the classes in label order.
        ece: expected calibration error of the probabilities (15 bins), or None.
        raw_ece: the same of the raw softmax, where the model has a temperature.
    """

    matrix: np.ndarray
    class_names: list[str]
    ece: float | None = None
    raw_ece: float | None = None

    @property
    def examples(self) -> int:
        return int(self.matrix.sum())

    @property
    def accuracy(self) -> float:
        return accuracy(self.matrix)

    @property
    def recall(self) -> dict[str, float]:
        """Per-class recall (nan for a class with no examples)."""
        support = self.matrix.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.diag(self.matrix) / support
        return {name: float(v) for name, v in zip(self.class_names, values, strict=True)}

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes that occur."""
        return balanced_accuracy(self.matrix)

    def one_line(self) -> str:
        recall = ", ".join(f"{name} {value:.3f}" for name, value in self.recall.items())
        ece = "" if self.ece is None else f", ECE {self.ece:.4f}"
        if self.raw_ece is not None:
            ece += f" (raw softmax {self.raw_ece:.4f})"
        return (
            f"accuracy {self.accuracy:.4f}, balanced accuracy {self.balanced_accuracy:.4f}{ece} "
            f"(recall: {recall}; {self.examples} examples)"
        )


@dataclasses.dataclass
class Evaluation:
    """The plain scores and, with test-time augmentation, the averaged ones.

    Args:
        plain: `Scores` of the model on the inputs as they are.
        tta: `Scores` of the mean probabilities over the test-time views, or None.
        tta_name: which views (`flip`, `dihedral`), or `none`.
    """

    plain: Scores
    tta: Scores | None = None
    tta_name: str = "none"

    def markdown(self, title: str = "Test") -> str:
        """A report section: both scores, the calibration error, per-class
        precision/recall/F1, the most-confused pairs, the confusion matrices."""
        lines = [f"## {title}", ""]
        runs = [("plain", self.plain)]
        if self.tta is not None:
            runs.append((f"TTA ({self.tta_name}, mean of probabilities)", self.tta))
        lines += [
            "| | accuracy | balanced accuracy | "
            + " | ".join(f"recall {name}" for name in self.plain.class_names)
            + " |",
            "|" + " --- |" * (3 + len(self.plain.class_names)),
        ]
        for name, scores in runs:
            recall = " | ".join(f"{v:.4f}" for v in scores.recall.values())
            lines.append(
                f"| {name} | {scores.accuracy:.4f} | {scores.balanced_accuracy:.4f} | {recall} |"
            )
        if self.plain.ece is not None:
            raw = self.plain.raw_ece
            lines += [
                "",
                f"Expected calibration error of the plain probabilities (15 bins): "
                f"{self.plain.ece:.4f}"
                + ("." if raw is None else f"; of the raw softmax: {raw:.4f}."),
            ]
        names = self.plain.class_names
        lines += ["", "Per class, plain:", "", *class_table(self.plain.matrix, names)]
        confused = most_confused(self.plain.matrix, names)
        if confused:
            lines += ["", "Most confused, plain (true -> predicted: examples):", ""]
            lines += [f"- {true} -> {predicted}: {count}" for true, predicted, count in confused]
        for name, scores in runs:
            lines += ["", f"Confusion matrix, {name} (rows: true, columns: predicted):", ""]
            lines += matrix_table(scores.matrix, scores.class_names)
        return "\n".join(lines)


def predict_probabilities(model: keras.Model, inputs, *, tta: str = "none") -> np.ndarray:
    """Class probabilities, averaged over the test-time views with `tta`.

    Args:
        model: a classifier producing logits (a `TransferModel`).
        inputs: a batch of images `[batch, size, size, 3]`; for a text model, a
            batch of raw strings (a list, a 1-D array or string tensor) or its
            token inputs; with `tta="none"`, any inputs the model takes.
        tta: `none`, `flip` (identity and horizontal mirror) or `dihedral` (all 8):
            images only.

    Returns:
        `[batch, classes]` probabilities: softmax ones at the model's
        `temperature`, or one sigmoid per label for a multi-label model.

    Raises:
        ValueError: a regression model, or `tta` views for a text model.

    Example:
        >>> probabilities = kerastl.predict_probabilities(model, images, tta="dihedral")
        >>> kerastl.predict_probabilities(text_model, ["a fine film", "dull"])
    """
    task = getattr(model, "task", "classification")
    if task == "regression":
        raise ValueError(
            "A regression model predicts values, not probabilities: use "
            "`model.predict(inputs)`. Received: task='regression'."
        )
    indices = _checked_views(model, tta)
    if hasattr(model, "prepare_data"):  # a text TransferModel's raw strings -> tokens
        inputs = model.prepare_data(inputs)

    def run(images):
        return model(images, training=False)

    per_view = _view_probabilities(
        run, inputs, indices, _temperature(model), multilabel=task == "multilabel"
    )
    return per_view.mean(axis=0)


def evaluate(
    model: keras.Model,
    dataset,
    *,
    tta: str = "none",
    class_names: Sequence[str] | None = None,
    verbose: int | str = "auto",
) -> Evaluation:
    """Plain and test-time-augmented scores from one pass over `dataset`.

    Args:
        model: a trained classifier producing logits (a `TransferModel`).
        dataset: batches of `(inputs, integer labels)`.
        tta: `none`, `flip` or `dihedral`: the views whose mean probabilities
            give the TTA scores (images only).
        class_names: names for the report (default: the model's, else numbers).
        verbose: `0` silent, `1` a progress bar, `2` a line every few
            seconds, `"auto"` (`kerastl._progress.resolve_verbose`).

    Returns:
        An `Evaluation` (`.plain`, `.tta`).

    Example:
        >>> result = kerastl.evaluate(model, test_ds, tta="dihedral")
        >>> print(result.plain.accuracy, result.tta.accuracy)
    """
    import tensorflow as tf

    if getattr(model, "task", "classification") != "classification":
        raise ValueError(
            "`evaluate` scores single-label classifiers (accuracy, confusion matrix, "
            f"calibration); score a {model.task} model with `model.evaluate`. "
            f"Received: task={model.task!r}."
        )
    views = _checked_views(model, tta)
    if hasattr(model, "prepare_data"):  # a text TransferModel's raw strings -> tokens
        dataset = model.prepare_data(dataset)
    names = list(class_names or getattr(model, "class_names", None) or [])
    classes = None
    plain = averaged = None
    confident, truth = [], []  # the plain probabilities and labels, for the ECE
    # Direct calls, not `predict`: under a multi-worker strategy `predict`
    # returns the global batch's outputs, which do not line up with these labels.
    run = traced_inference(model, dataset.element_spec[0])  # traced once, any batch size
    what = "evaluating" + (f" over {len(views)} test-time views" if len(views) > 1 else "")
    progress = Progress(what, int(dataset.cardinality()), verbose)
    for step, batch in enumerate(dataset.prefetch(tf.data.AUTOTUNE), start=1):
        probabilities = _view_probabilities(run, batch[0], views, _temperature(model))
        labels = np.asarray(batch[1]).reshape(-1)
        if classes is None:
            classes = probabilities.shape[-1]
            plain = np.zeros((classes, classes), np.int64)
            averaged = np.zeros_like(plain)
        np.add.at(plain, (labels, probabilities[0].argmax(-1)), 1)
        np.add.at(averaged, (labels, probabilities.mean(axis=0).argmax(-1)), 1)
        confident.append(probabilities[0])
        truth.append(labels)
        progress.update(step)
    progress.finish()
    if classes is None:
        raise ValueError("Cannot evaluate on an empty dataset.")
    names = names if len(names) == classes else [str(i) for i in range(classes)]
    tta_scores = Scores(averaged, names) if len(views) > 1 else None
    confident, truth = np.concatenate(confident), np.concatenate(truth)
    ece = expected_calibration_error(confident, truth)
    raw_ece = None
    if _temperature(model) != 1.0:  # softmax(T log p) is the raw softmax again
        raw = softmax(np.log(np.maximum(confident, 1e-300)) * _temperature(model))
        raw_ece = expected_calibration_error(raw, truth)
    return Evaluation(Scores(plain, names, ece, raw_ece), tta_scores, tta)


def _view_probabilities(
    run, inputs, views, temperature: float = 1.0, *, multilabel: bool = False
) -> np.ndarray:
    """`[views, batch, classes]` softmax probabilities of `logits / temperature`
    (sigmoid ones for a multi-label model; `run`: inputs -> logits), view 0
    the identity."""
    outputs = []
    for view in views:
        viewed = inputs if view == 0 else dihedral_view(inputs, view)
        logits = keras.tree.flatten(run(viewed))[0] / temperature
        probabilities = keras.ops.sigmoid(logits) if multilabel else keras.ops.softmax(logits)
        outputs.append(keras.ops.convert_to_numpy(probabilities))
    return np.stack(outputs)


def _checked_views(model, tta: str) -> tuple[int, ...]:
    """`tta`'s view indices; more than the identity only for an image model."""
    views = tta_views(tta)
    if len(views) > 1 and getattr(model, "modality", "image") != "image":
        raise ValueError(
            f"Test-time views are image transforms. Received: tta={tta!r} for a "
            f"{model.modality} model."
        )
    return views


def _temperature(model) -> float:
    """The model's softmax temperature (`kerastl.calibrate`), 1 for other models."""
    return float(getattr(model, "temperature", 1.0))
