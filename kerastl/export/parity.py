"""Numerical parity of exports with the Keras model they came from."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import keras
import numpy as np

from kerastl.export.samples import model_inputs, model_samples, sample_count, whole_pixels
from kerastl.export.signatures import IMAGE_TENSOR_TTA, TENSOR_SIGNATURES, probabilities_of

DEFAULT_TOLERANCE = 1e-4
PARITY_FILE = "parity.json"  # in a SavedModel's assets.extra/
# Beside an ONNX or LiteRT file, named after it: `model.onnx.parity.json`.
PARITY_SUFFIX = ".parity.json"


class ParityError(RuntimeError):
    """An export's outputs differ from the Keras model's beyond the tolerance.

    Attributes:
        report: the `ParityReport` that failed.
    """

    def __init__(self, report: ParityReport):
        self.report = report
        super().__init__(
            f"The export was not published: it disagrees with the Keras model.\n{report.summary()}"
        )


@dataclasses.dataclass(frozen=True)
class ParityResult:
    """How one export compares with the Keras model.

    Attributes:
        target: the export's path.
        max_abs_diff: largest absolute difference of the compared output.
        top1_agreement: fraction of samples with the same top-1 class
            (None for regression).
        passed: `max_abs_diff <= tolerance` and identical top-1 classes.
    """

    target: str
    max_abs_diff: float
    top1_agreement: float | None
    passed: bool


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """Keras vs each export on the same samples.

    Attributes:
        output: the compared output (`probabilities`, or `predictions`).
        tolerance: the largest absolute difference allowed.
        samples: how many samples were compared.
        results: one `ParityResult` per export.
    """

    output: str
    tolerance: float
    samples: int
    results: tuple[ParityResult, ...]

    @property
    def passed(self) -> bool:
        """Whether every export passed."""
        return all(result.passed for result in self.results)

    def for_target(self, target: str) -> ParityReport:
        """The same report naming `target` (where a checked temporary export is published);
        a result for one signature keeps its `#signature` suffix."""
        results = tuple(
            dataclasses.replace(r, target=target + r.target[len(r.target.split("#")[0]) :])
            for r in self.results
        )
        return dataclasses.replace(self, results=results)

    def including(self, result: ParityResult) -> ParityReport:
        """The same report with one more result."""
        return dataclasses.replace(self, results=(*self.results, result))

    def to_dict(self) -> dict:
        """The report as JSON-ready data."""
        return {**dataclasses.asdict(self), "passed": self.passed}

    def write(self, path: str | os.PathLike) -> str:
        """Writes the report as JSON; returns the path."""
        with open(path, "w") as file:
            json.dump(self.to_dict(), file, indent=2)
            file.write("\n")
        return os.fspath(path)

    def summary(self) -> str:
        """One line per export, marked ok or FAILED."""
        lines = [f"{self.output} on {self.samples} samples, tolerance {self.tolerance:g}:"]
        for result in self.results:
            top1 = "" if result.top1_agreement is None else f", top-1 {result.top1_agreement:.3f}"
            mark = "ok" if result.passed else "FAILED"
            lines.append(f"  {mark}: {result.target}: max abs diff {result.max_abs_diff:.3g}{top1}")
        return "\n".join(lines)


def check_parity(
    model: keras.Model,
    exported: str | os.PathLike | Sequence[str | os.PathLike],
    samples=None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    report_path: str | os.PathLike | None = None,
) -> ParityReport:
    """Compares Keras with SavedModel, ONNX and/or LiteRT exports on the same samples.

    SavedModels are called through their tensor signature (`image_tensor` or
    `token_ids`), ONNX files through onnxruntime, `.tflite` files through
    LiteRT's interpreter. Probabilities are compared
    (predictions for regression), with the top-1 class.

    Args:
        model: the Keras model.
        exported: a SavedModel directory, `.onnx` or `.tflite` file, or a list of them.
        samples: model inputs (see `kerastl.export.samples.model_samples`);
            None: deterministic random inputs.
        tolerance: largest absolute difference allowed.
        report_path: where to write the report as JSON (e.g. `parity.json`).

    Returns:
        A `ParityReport`; `report.passed` says whether all exports passed.

    Example:
        >>> report = kerastl.export.check_parity(model, ["out/1", "out/model.onnx"], images)
        >>> print(report.summary())
    """
    if not isinstance(tolerance, int | float) or not tolerance >= 0:
        raise ValueError(f"`tolerance` must be a number >= 0. Received: tolerance={tolerance!r}.")
    targets = [exported] if isinstance(exported, str | os.PathLike) else list(exported)
    if not targets:
        raise ValueError("`exported` names no export to compare.")
    paths = [os.fspath(target) for target in targets]
    runs = [(path, functools.partial(_run_export, path)) for path in paths]
    report = _tensor_parity(model, runs, samples, tolerance)
    if report_path is not None:
        report.write(report_path)
    return report


def saved_model_parity(
    model: keras.Model,
    loaded,
    path: str,
    samples,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    text: tuple | None = None,
    tta: str | None = None,
) -> ParityReport:
    """Every check of a SavedModel kerastl wrote, on the one load its caller holds.

    `check_parity` on the tensor signature, then `check_text_parity` and
    `check_tta_parity` where asked, each of which would load it again.

    Args:
        model: the Keras model.
        loaded: the SavedModel, as `tf.saved_model.load(path)` gives it.
        path: its directory (the name in the report).
        samples: model inputs (see `check_parity`).
        tolerance: largest absolute difference allowed.
        text: `(preprocessor, texts)` to check the `text` signature on.
        tta: the views of the `image_tensor_tta` signature to check (on the
            first 8 samples: 8 views each).

    Returns:
        The `ParityReport`: the tensor signature, then `#text`, then `#image_tensor_tta`.

    Example:
        >>> loaded = tf.saved_model.load("out/1")
        >>> print(saved_model_parity(model, loaded, "out/1", images).passed)
    """
    runs = [(path, functools.partial(_saved_model_outputs, loaded, path))]
    report = _tensor_parity(model, runs, samples, tolerance)
    if text is not None:
        preprocessor, texts = text
        report = report.including(_text_result(model, loaded, path, preprocessor, texts, tolerance))
    if tta is not None:
        images = model_samples(model, samples)
        images = images if len(images) <= 8 else images[:8]
        report = report.including(_tta_result(model, loaded, path, images, tta, tolerance))
    return report


def _tensor_parity(model, runs, samples, tolerance: float) -> ParityReport:
    """Keras against each `(target, run)`, `run` mapping inputs to an export's outputs."""
    samples = model_samples(model, samples)
    inputs = model_inputs(samples)
    if not isinstance(inputs, dict):  # whole pixels: exact for uint8 `image_tensor` too
        inputs = whole_pixels(inputs).astype(np.float32)
    output, expected, regression = _keras_outputs(model, inputs)
    results = tuple(
        _compared(target, run(inputs)[output], expected, tolerance, regression)
        for target, run in runs
    )
    return ParityReport(output, float(tolerance), sample_count(samples), results)


def check_tta_parity(
    model: keras.Model, path: str, samples=None, *, tta: str, tolerance: float = DEFAULT_TOLERANCE
) -> ParityResult:
    """Compares a SavedModel's `image_tensor_tta` with `kerastl.predict_probabilities`.

    Args:
        model: the Keras model.
        path: the SavedModel directory.
        samples: images (see `check_parity`).
        tta: the views the signature was exported with.
        tolerance: largest absolute difference of probabilities allowed.

    Returns:
        A `ParityResult` whose target is `PATH#image_tensor_tta`.

    Example:
        >>> print(check_tta_parity(model, "out/1", images, tta="dihedral").passed)
    """
    import tensorflow as tf

    return _tta_result(model, tf.saved_model.load(path), path, samples, tta, tolerance)


def _tta_result(model, loaded, path, samples, tta, tolerance) -> ParityResult:
    import tensorflow as tf

    from kerastl.training.evaluation import predict_probabilities

    images = whole_pixels(model_inputs(model_samples(model, samples))).astype(np.float32)
    expected = predict_probabilities(model, images, tta=tta)
    function = loaded.signatures[IMAGE_TENSOR_TTA]
    dtype = function.structured_input_signature[1]["images"].dtype
    actual = function(images=tf.cast(images, dtype))["probabilities"].numpy()
    return _compared(f"{path}#{IMAGE_TENSOR_TTA}", actual, expected, tolerance)


def check_text_parity(
    model: keras.Model,
    path: str,
    preprocessor,
    texts: Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ParityResult:
    """Compares a SavedModel's `text` signature with Keras on the same raw strings.

    Keras sees the strings tokenized by `preprocessor` as training does (see
    `kerastl.backbones.tokenizers.tokenize`); the signature tokenizes them in
    its own graph. A token that differs shows as a difference of probabilities.

    Args:
        model: the Keras model.
        path: the SavedModel directory.
        preprocessor: the KerasHub preprocessor the model trained with.
        texts: raw strings.
        tolerance: largest absolute difference of probabilities allowed.

    Returns:
        A `ParityResult` whose target is `PATH#text`.

    Example:
        >>> print(check_text_parity(model, "out/1", model.preprocessor, ["fine"]).passed)
    """
    import tensorflow as tf

    return _text_result(model, tf.saved_model.load(path), path, preprocessor, texts, tolerance)


def _text_result(model, loaded, path, preprocessor, texts, tolerance) -> ParityResult:
    import tensorflow as tf

    from kerastl.backbones.tokenizers import tokenize

    texts = tf.constant([str(text) for text in texts], tf.string)
    tokens = tokenize(preprocessor, texts)
    output, expected, regression = _keras_outputs(model, {n: tokens[n] for n in model.input})
    actual = loaded.signatures["text"](text=texts)[output].numpy()
    return _compared(f"{path}#text", actual, expected, tolerance, regression)


def _keras_outputs(model: keras.Model, inputs):
    """What exports are compared on: `(output name, Keras's values, regression?)`."""
    regression = getattr(model, "task", "classification") == "regression"
    logits = keras.tree.flatten(model(inputs, training=False))[0]
    expected = np.asarray(logits if regression else probabilities_of(model, logits))
    return ("predictions" if regression else "probabilities"), expected, regression


def _compared(target: str, actual, expected, tolerance: float, regression: bool = False):
    """The `ParityResult` of an export's outputs against Keras's."""
    same_shape = actual.shape == expected.shape
    diff = float(np.max(np.abs(actual - expected))) if same_shape else np.inf
    top1 = None
    if not regression and same_shape:
        top1 = float(np.mean(actual.argmax(-1) == expected.argmax(-1)))
    passed = diff <= tolerance and (top1 is None or top1 == 1.0)
    return ParityResult(target, diff, top1, passed)


def _run_export(target: str, inputs) -> dict[str, np.ndarray]:
    if target.endswith(".onnx"):
        return _run_onnx(target, inputs)
    if target.endswith(".tflite"):
        from kerastl.export.litert_runtime import run_litert

        return run_litert(target, inputs)
    if os.path.isdir(target):
        return _run_saved_model(target, inputs)
    raise ValueError(
        "An export must be a SavedModel directory, an `.onnx` or a `.tflite` file. "
        f"Received: {target!r}."
    )


def _run_saved_model(path: str, inputs) -> dict[str, np.ndarray]:
    import tensorflow as tf

    return _saved_model_outputs(tf.saved_model.load(path), path, inputs)


def _saved_model_outputs(loaded, path: str, inputs) -> dict[str, np.ndarray]:
    import tensorflow as tf

    names = [name for name in TENSOR_SIGNATURES if name in loaded.signatures]
    if not names:
        raise ValueError(
            f"{path!r} has no tensor signature ({TENSOR_SIGNATURES}) to compare. "
            f"It has: {sorted(loaded.signatures)}."
        )
    function = loaded.signatures[names[0]]
    feed = inputs if isinstance(inputs, dict) else {"images": inputs}
    dtypes = {name: spec.dtype for name, spec in function.structured_input_signature[1].items()}
    feed = {name: tf.cast(value, dtypes[name]) for name, value in feed.items()}
    return {name: value.numpy() for name, value in function(**feed).items()}


def _run_onnx(path: str, inputs) -> dict[str, np.ndarray]:
    from kerastl.export.onnx_runtime import onnx_session, run_onnx

    return run_onnx(onnx_session(path), inputs)
