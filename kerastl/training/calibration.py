"""Calibrated probabilities: temperature scaling and the expected calibration error.

A classifier's softmax is often over-confident after fine-tuning: of the
examples it gives 0.9, fewer than 90% are right. Temperature scaling (Guo et
al. 2017) divides the logits by one number `T` fitted on validation data to
minimise the negative log-likelihood; the predicted class never changes (the
order of the logits is kept), only how sure the model says it is.
`calibrate(model, validation)` fits `T` and stores it in a `TransferModel`
(`model.temperature`, saved with it), so `predict_probabilities`, `evaluate`
and the `probabilities` of every export use it; `logits` stay raw.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

ECE_BINS = 15
_LOG_BETA = (-7.0, 7.0)  # the search range of log(1 / T): T from 0.001 to 1100


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it changed on the data it was fitted on.

    Args:
        temperature: the logits' divisor `T` (> 0; 1 changes nothing).
        ece_before: expected calibration error of the raw softmax (15 bins).
        ece_after: the same with the logits divided by `temperature`.
        nll_before: mean negative log-likelihood of the raw softmax.
        nll_after: the same after scaling (never above `nll_before`).
        samples: how many examples it was fitted on.
        note: why the temperature was left at 1, or "".
    """

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    samples: int
    note: str = ""

    def one_line(self) -> str:
        """`temperature 1.42: ECE 0.061 -> 0.018 on 525 validation examples`."""
        note = f" ({self.note})" if self.note else ""
        return (
            f"temperature {self.temperature:.3g}: ECE {self.ece_before:.3f} -> "
            f"{self.ece_after:.3f} on {self.samples} validation examples{note}"
        )


def calibrate(model: keras.Model, validation, *, bins: int = ECE_BINS) -> Calibration:
    """Fits the temperature of `model`'s softmax on `validation` and stores it.

    Args:
        model: a single-label classifier producing logits (a `TransferModel`:
            its `temperature` is set, and saved with it).
        validation: batches of `(inputs, integer labels)`, held out of training.
        bins: equal-width confidence bins of the calibration error.

    Returns:
        A `Calibration`: the temperature, and the ECE and NLL before and after.

    Raises:
        ValueError: a multi-label or regression model, or empty data.

    Example:
        >>> result = kerastl.calibrate(model, val_ds)
        >>> print(result.one_line())
        temperature 1.42: ECE 0.061 -> 0.018 on 525 validation examples
    """
    if getattr(model, "task", "classification") != "classification":
        raise ValueError(
            "Temperature scaling calibrates a softmax: single-label classification only. "
            f"Received: a {model.task} model."
        )
    logits, labels = logits_and_labels(model, validation)
    note = ""
    if np.all(logits.argmax(axis=1) == labels):
        # The loss then falls as T -> 0 without a minimum: any T would be arbitrary.
        temperature, note = 1.0, "every example is classified right: nothing to fit, kept 1"
    else:
        temperature = fit_temperature(logits, labels)
        if temperature > 0.99 * math.exp(-_LOG_BETA[0]):  # the search's upper bound
            note = (
                "at the search's bound: on these examples the model's confidence does no "
                "better than equal probabilities, which the temperature now gives"
            )
    before, after = softmax(logits), softmax(logits / temperature)
    result = Calibration(
        temperature=temperature,
        ece_before=expected_calibration_error(before, labels, bins),
        ece_after=expected_calibration_error(after, labels, bins),
        nll_before=_nll(before, labels),
        nll_after=_nll(after, labels),
        samples=len(labels),
        note=note,
    )
    model.temperature = temperature
    return result


def logits_and_labels(model: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """The model's raw logits on every batch of `dataset`, and the labels.

    Args:
        model: a model producing logits.
        dataset: batches of `(inputs, integer labels)` (raw strings for a
            text `TransferModel`: `prepare_data` tokenizes them).

    Returns:
        `(logits [n, classes] float64, labels [n] int64)`.

    Example:
        >>> logits, labels = logits_and_labels(model, val_ds)
    """
    from kerastl.training.inference import traced_inference

    prepare = getattr(model, "prepare_data", None)
    dataset = prepare(dataset) if prepare is not None else dataset
    run = traced_inference(model, dataset.element_spec[0])
    logits, labels = [], []
    for inputs, batch_labels, *_ in dataset:
        logits.append(keras.ops.convert_to_numpy(keras.tree.flatten(run(inputs))[0]))
        labels.append(np.asarray(batch_labels).reshape(-1))
    if not logits:
        raise ValueError("Cannot calibrate on an empty dataset.")
    return np.concatenate(logits).astype(np.float64), np.concatenate(labels).astype(np.int64)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `labels`.

    The NLL is convex in `1 / T`, so a golden-section search over `log(1 / T)`
    finds its one minimum (to about 1e-6 relative).

    Args:
        logits: `[n, classes]` raw logits.
        labels: `[n]` integer labels.

    Returns:
        `T` > 0.

    Raises nothing; with every example right the loss has no minimum and
    the search ends at its bound (`calibrate` keeps 1 then).

    Example:
        >>> fit_temperature(np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]),
        ...                 np.array([0, 0, 1, 1]))  # 3 of 4 right at p 0.88: T > 1
        1.8...
    """
    low, high = _LOG_BETA
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_beta: float) -> float:
        return _nll(softmax(logits * math.exp(log_beta)), labels)

    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(60):
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return float(1.0 / math.exp((low + high) / 2))


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the gap between confidence and accuracy, weighted by the examples per bin.

    Args:
        probabilities: `[n, classes]`.
        labels: `[n]` integer labels.
        bins: equal-width bins of the top-1 confidence over (0, 1].

    Returns:
        `sum_b |accuracy_b - confidence_b| * n_b / n`, in [0, 1].

    Example:
        >>> expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]))
        0.4
    """
    confidence, accuracy, counts = reliability(probabilities, labels, bins)
    filled = counts > 0
    gaps = np.abs(accuracy[filled] - confidence[filled]) * counts[filled]
    return float(gaps.sum() / max(counts.sum(), 1))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS):
    """Mean confidence, accuracy and count of the examples in each confidence bin.

    Args:
        probabilities: `[n, classes]`.
        labels: `[n]` integer labels.
        bins: equal-width bins over (0, 1].

    Returns:
        `(confidence [bins], accuracy [bins], counts [bins])`; empty bins hold 0.

    Example:
        >>> confidence, accuracy, counts = reliability(probabilities, labels)
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    top = probabilities.max(axis=1)
    right = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    index = np.clip(np.ceil(top * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.nan_to_num(np.bincount(index, top, bins) / counts)
        accuracy = np.nan_to_num(np.bincount(index, right, bins) / counts)
    return confidence, accuracy, counts


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (max subtracted first).

    Example:
        >>> softmax(np.array([[0.0, 0.0]]))
        array([[0.5, 0.5]])
    """
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponent = np.exp(shifted)
    return exponent / exponent.sum(axis=-1, keepdims=True)


def _nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(picked, 1e-300)).mean())
