"""The accuracy gate of quantized exports (int8 ONNX, int8/float16 LiteRT).

Quantizing silently moves predictions: on the demo's Lite0, onnxruntime's
static int8 flips about 3% of the validation predictions, most of them
near the decision boundary. So a quantized file is published only after it
is scored beside the float model it came from, on samples it was not
calibrated on: refused (`QuantizationError`, nothing at `path`) when
accuracy drops by more than `max_accuracy_drop` or top-1 agreement with the
float model falls under `min_agreement`. What was measured goes to
`<path>.quantization.json` either way (`model.int8.onnx.quantization.json`:
named after the whole file, so an ONNX and a LiteRT file side by side keep
their own reports).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import numpy as np

from kerastl._validation import check_positive_int
from kerastl.export.samples import dataset_arrays, model_inputs, model_samples, sample_count

QUANTIZATION_FILE_SUFFIX = ".quantization.json"
DEFAULT_MAX_ACCURACY_DROP = 0.01
DEFAULT_MIN_AGREEMENT = 0.98
DEFAULT_CALIBRATION_SIZE = 256
MIN_GATE_SAMPLES = 8


class QuantizationError(RuntimeError):
    """A quantized export is outside its accuracy bounds; nothing was published.

    Attributes:
        report: the `QuantizationReport` that failed.
    """

    def __init__(self, report: QuantizationReport):
        self.report = report
        super().__init__(
            f"The quantized export was not published: {report.failure()}.\n{report.summary()}\n"
            "Pass more `samples` (calibration and scoring), looser bounds "
            "(`max_accuracy_drop`, `min_agreement`; `--max-accuracy-drop`, `--min-agreement` "
            "for `kerastl export`), or export in float."
        )


@dataclasses.dataclass(frozen=True)
class QuantizationReport:
    """A quantized export scored beside its float model.

    Attributes:
        target: the file published (or refused).
        method: how it was quantized (e.g. `onnxruntime static QDQ int8`).
        calibration_samples: samples the quantizer calibrated on.
        scored_samples: other samples both models were scored on.
        float_accuracy: top-1 accuracy of the float model (None without labels).
        quantized_accuracy: the same for the quantized file.
        agreement: fraction of scored samples with the same top-1 class.
        max_abs_diff: largest difference of probabilities on them.
        float_size_mb / quantized_size_mb: file sizes.
        float_latency_ms / quantized_latency_ms: median batch-1 call time.
        max_accuracy_drop / min_agreement: the bounds applied.
    """

    target: str
    method: str
    calibration_samples: int
    scored_samples: int
    float_accuracy: float | None
    quantized_accuracy: float | None
    agreement: float
    max_abs_diff: float
    float_size_mb: float
    quantized_size_mb: float
    float_latency_ms: float
    quantized_latency_ms: float
    max_accuracy_drop: float
    min_agreement: float

    @property
    def accuracy_drop(self) -> float | None:
        """Float accuracy minus quantized accuracy (None without labels)."""
        if self.float_accuracy is None:
            return None
        return self.float_accuracy - self.quantized_accuracy

    @property
    def passed(self) -> bool:
        """Whether the quantized file is within both bounds."""
        return self.failure() is None

    def failure(self) -> str | None:
        """Which bound failed, with the measured value (None when both hold)."""
        drop = self.accuracy_drop
        if drop is not None and drop > self.max_accuracy_drop:
            return (
                f"accuracy dropped by {drop:.4f} ({self.float_accuracy:.4f} -> "
                f"{self.quantized_accuracy:.4f}), more than max_accuracy_drop="
                f"{self.max_accuracy_drop:g}"
            )
        if self.agreement < self.min_agreement:
            return (
                f"top-1 agreement with the float model is {self.agreement:.4f}, under "
                f"min_agreement={self.min_agreement:g}"
            )
        return None

    def summary(self) -> str:
        """The measurements, one line each."""
        if self.float_accuracy is None:
            accuracy = "no labels: agreement only"
        else:
            accuracy = (
                f"accuracy {self.float_accuracy:.4f} float, {self.quantized_accuracy:.4f} quantized"
            )
        return "\n".join(
            [
                f"  {self.method}, "
                + (
                    f"calibrated on {self.calibration_samples} samples, scored on "
                    f"{self.scored_samples} others:"
                    if self.calibration_samples
                    else f"scored on {self.scored_samples} samples:"
                ),
                f"  {accuracy}; top-1 agreement {self.agreement:.4f}; max abs diff of "
                f"probabilities {self.max_abs_diff:.3g}",
                f"  {self.float_size_mb:.1f} MB -> {self.quantized_size_mb:.1f} MB; batch 1 "
                f"{self.float_latency_ms:.2f} ms -> {self.quantized_latency_ms:.2f} ms",
            ]
        )

    def to_dict(self) -> dict:
        """The report as JSON-ready data."""
        return {
            **dataclasses.asdict(self),
            "accuracy_drop": self.accuracy_drop,
            "passed": self.passed,
        }

    def write(self, path: str | os.PathLike) -> str:
        """Writes the report as JSON; returns the path."""
        with open(path, "w") as file:
            json.dump(self.to_dict(), file, indent=2)
            file.write("\n")
        return os.fspath(path)

    @classmethod
    def read(cls, path: str | os.PathLike, **bounds) -> QuantizationReport:
        """A report written by `write`, optionally judged against other bounds.

        Args:
            path: the `.quantization.json` file.
            **bounds: `max_accuracy_drop` and/or `min_agreement` to judge the
                same measurements by (default: the bounds it was made with).

        Returns:
            The `QuantizationReport`.

        Example:
            >>> QuantizationReport.read("out/model.int8.onnx.quantization.json").passed
            True
        """
        with open(path) as file:
            measured = json.load(file)
        fields = {name: measured[name] for name in cls.__dataclass_fields__}
        return cls(**{**fields, **bounds})


def check_quantizable(model, max_accuracy_drop, min_agreement, calibration_size) -> None:
    """Raises `ValueError` for a model the gate cannot score, or a bound or size
    outside what it can be."""
    task = getattr(model, "task", "classification")
    if task != "classification":
        raise ValueError(
            "Quantized exports are gated on top-1 accuracy and agreement: single-label "
            f"classification only. Received: a {task} model."
        )
    for name, value in (("max_accuracy_drop", max_accuracy_drop), ("min_agreement", min_agreement)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"`{name}` must be a number in [0, 1]. Received: {name}={value!r}.")
    check_positive_int("calibration_size", calibration_size)


def labeled_samples(model, samples, limit: int = 100_000):
    """All of `samples` as model inputs, with their labels when they carry them.

    Args:
        model: the model the samples are for.
        samples: a `tf.data` dataset of `inputs` or `(inputs, labels, ...)`
            batches, a tuple `(inputs, labels)`, or inputs alone (an image
            array, a dict of token arrays, or raw strings for a text model).
        limit: most examples read.

    Returns:
        `(inputs, labels)`: float32 images or a dict of int32 token arrays,
        and int class ids (None without labels).

    Example:
        >>> inputs, labels = labeled_samples(model, val_ds)
    """
    labels = None
    if hasattr(samples, "take") and hasattr(samples, "element_spec"):
        samples, labels = dataset_arrays(samples, limit)
    elif isinstance(samples, tuple):
        if len(samples) != 2:
            raise ValueError(
                "Tuple `samples` must be `(inputs, labels)`. "
                f"Received: a tuple of {len(samples)} items."
            )
        samples, labels = samples
    inputs = model_inputs(model_samples(model, samples, count=limit))
    if labels is not None:
        labels = _class_ids(labels)
        count = sample_count(inputs)
        if len(labels) != count:
            raise ValueError(
                f"`samples` has {count} inputs but {len(labels)} labels. Received: labels of "
                f"shape {np.shape(labels)}."
            )
    return inputs, labels


def gated_samples(
    model, samples, *, calibrates: bool, what: str, max_accuracy_drop, min_agreement,
    calibration_size,
):  # fmt: skip
    """A quantized export's arguments checked and its samples split, before any slow work.

    Args:
        model: the model to export.
        samples: as `labeled_samples` takes them (required).
        calibrates: whether the quantizer calibrates (static int8) or not
            (dynamic int8, float16: every sample scores it).
        what: the export, for the error (e.g. `"int8 ONNX"`).
        max_accuracy_drop / min_agreement / calibration_size: the gate.

    Returns:
        `(inputs, calibration, scored, scored_labels)`: all the inputs (for
        the float parity check), then `split_for_calibration`'s parts
        (`calibration` None when nothing calibrates).

    Example:
        >>> inputs, calibration, scored, labels = gated_samples(
        ...     model, val_ds, calibrates=True, what="int8 ONNX", max_accuracy_drop=0.01,
        ...     min_agreement=0.98, calibration_size=256)
    """
    check_quantizable(model, max_accuracy_drop, min_agreement, calibration_size)
    if samples is None:
        raise ValueError(f"A quantized export ({what}) needs real `samples` to score it on.")
    inputs, labels = labeled_samples(model, samples)
    if not calibrates:
        return inputs, None, inputs, labels
    return (inputs, *split_for_calibration(inputs, labels, calibration_size))


def split_for_calibration(inputs, labels, calibration_size: int):
    """Calibration samples, then the others, which score the quantized file.

    The quantizer sees the first `calibration_size` examples (at most half);
    the gate scores the rest, so the check is not made on what it tuned to.

    Returns:
        `(calibration, scored, scored_labels)`.

    Raises:
        ValueError: fewer than `2 * MIN_GATE_SAMPLES` examples.
    """
    count = sample_count(inputs)
    if count < 2 * MIN_GATE_SAMPLES:
        raise ValueError(
            f"A quantized export needs at least {2 * MIN_GATE_SAMPLES} `samples` (some to "
            "calibrate on, others to score it on; `kerastl export` takes the run's "
            f"validation split). Received: {count}."
        )
    cut = min(calibration_size, count // 2)

    def part(selection):
        if isinstance(inputs, dict):
            return {name: value[selection] for name, value in inputs.items()}
        return inputs[selection]

    scored_labels = None if labels is None else labels[cut:]
    return part(slice(0, cut)), part(slice(cut, None)), scored_labels


def score(
    target: str,
    method: str,
    float_file: str,
    quantized_file: str,
    predict: Callable,
    calibration_count: int,
    scored,
    labels,
    *,
    max_accuracy_drop: float,
    min_agreement: float,
) -> QuantizationReport:
    """Scores a quantized file beside its float model on `scored` (and `labels`).

    Args:
        target: the path the quantized file is published as.
        method: how it was quantized, for the report.
        float_file / quantized_file: the two files, for sizes and `predict`.
        predict: `(file, inputs) -> probabilities` (batched inside).
        calibration_count: how many samples calibrated the quantizer.
        scored: inputs not calibrated on.
        labels: their class ids, or None.
        max_accuracy_drop / min_agreement: the bounds.

    Returns:
        The `QuantizationReport` (`report.passed` says whether it holds).
    """
    expected = predict(float_file, scored)
    actual = predict(quantized_file, scored)
    agreement = float(np.mean(actual.argmax(-1) == expected.argmax(-1)))
    float_accuracy = quantized_accuracy = None
    if labels is not None:
        float_accuracy = float(np.mean(expected.argmax(-1) == labels))
        quantized_accuracy = float(np.mean(actual.argmax(-1) == labels))
    one = _first(scored)
    return QuantizationReport(
        target=target,
        method=method,
        calibration_samples=int(calibration_count),
        scored_samples=len(expected),
        float_accuracy=float_accuracy,
        quantized_accuracy=quantized_accuracy,
        agreement=agreement,
        max_abs_diff=float(np.max(np.abs(actual - expected))),
        float_size_mb=os.path.getsize(float_file) / 1e6,
        quantized_size_mb=os.path.getsize(quantized_file) / 1e6,
        float_latency_ms=_median_ms(lambda: predict(float_file, one)),
        quantized_latency_ms=_median_ms(lambda: predict(quantized_file, one)),
        max_accuracy_drop=float(max_accuracy_drop),
        min_agreement=float(min_agreement),
    )


def report_path(path: str) -> str:
    """`model.int8.onnx` → `model.int8.onnx.quantization.json`."""
    return path + QUANTIZATION_FILE_SUFFIX


def _first(inputs):
    if isinstance(inputs, dict):
        return {name: value[:1] for name, value in inputs.items()}
    return inputs[:1]


def _median_ms(call: Callable, repeats: int = 20) -> float:
    call()  # the first call builds kernels, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _class_ids(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] > 1:  # one-hot
        return labels.argmax(-1)
    return labels.reshape(-1).astype(np.int64)
