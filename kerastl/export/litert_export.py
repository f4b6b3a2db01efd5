"""`litert`: a `.tflite` file for phones and edge devices, checked in LiteRT's interpreter."""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np

from kerastl import _atomic
from kerastl._progress import Progress
from kerastl._quiet import native_stderr_silenced
from kerastl.export.float32 import float32_copy
from kerastl.export.keras_export_fixes import track_model
from kerastl.export.litert_runtime import LiteRTRunner
from kerastl.export.parity import DEFAULT_TOLERANCE, PARITY_SUFFIX, ParityError, check_parity
from kerastl.export.quantization import (
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_MIN_AGREEMENT,
    QuantizationError,
    gated_samples,
    labeled_samples,
    report_path,
    score,
)
from kerastl.export.samples import model_samples
from kerastl.export.signatures import IMAGE_TENSOR, is_text_model, serving_function
from kerastl.peft import merged_for_export

QUANTIZE_LITERT = (None, "float16", "int8")
SUFFIX = ".tflite"


def litert(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    samples=None,
    quantize: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    overwrite: bool = False,
    verbose: int | str = "auto",
) -> str:
    """Exports an image model to a LiteRT (TF Lite) flatbuffer, checked before publishing.

    Converted with TensorFlow's LiteRT converter from the model's
    `image_tensor` signature: input `images` `[batch, H, W, 3]` float32 pixels
    in [0, 255]; outputs `logits`, `probabilities`, `class_id`,
    `top_k_probabilities` (or `predictions`). The file runs in
    `ai_edge_litert.interpreter.Interpreter` (and LiteRT on Android/iOS).

    - `quantize=None`: float32, compared with Keras on `samples` (max abs
      difference of probabilities <= `tolerance`, same top-1;
      `<path>.parity.json`), else `ParityError`.
    - `"float16"` (weights stored in float16, half the size) and `"int8"`
      (full-integer: int8 weights and activations calibrated on part of
      `samples` as the representative dataset, scored on the rest; float
      input and output) pass the accuracy gate instead (`kerastl.export.quantization`;
      `<path>.quantization.json`), else `QuantizationError`.

    Nothing is published at `path` when a check fails.

    Args:
        model: an image `TransferModel` (or a Keras model taking images).
        path: the `.tflite` file to create.
        samples: real inputs: images, `(images, labels)`, or a `tf.data`
            dataset of `(images, labels)` batches (labels let the gate score
            accuracy); None: random images (float32 only).
        quantize: None, `"float16"` or `"int8"`.
        tolerance: float32's largest absolute difference of probabilities.
        max_accuracy_drop: the gate's largest accuracy drop, as in `kerastl.export.onnx`.
        min_agreement: the gate's smallest top-1 agreement with the float model.
        calibration_size: most samples the quantizer calibrates on.
        overwrite: replace an existing file.
        verbose: progress, as in `saved_model`.

    Returns:
        `path`.

    Raises:
        ParityError: the float32 file disagrees with Keras.
        QuantizationError: a quantized file is outside the bounds.

    Example:
        >>> kerastl.export.litert(model, "out/elpv.tflite", samples=val_images)
        'out/elpv.tflite'
        >>> kerastl.export.litert(model, "out/elpv.int8.tflite", samples=val_ds, quantize="int8")
        'out/elpv.int8.tflite'
    """
    path = os.fspath(path)
    if not path.endswith(SUFFIX):
        raise ValueError(f"`path` must end in '{SUFFIX}'. Received: path={path!r}.")
    if quantize not in QUANTIZE_LITERT:
        raise ValueError(
            f"`quantize` must be one of {QUANTIZE_LITERT}. Received: quantize={quantize!r}."
        )
    if is_text_model(model):
        raise ValueError(
            "The LiteRT export takes image models; for a text model export ONNX "
            "(`kerastl.export.onnx`, dynamic sequence length) or a SavedModel."
        )
    _atomic.check_destination(path, overwrite)
    if quantize is not None:  # bad samples fail here, before the slow conversion
        inputs, calibration, scored, labels = gated_samples(
            model, samples, calibrates=quantize == "int8", what=f"{quantize} LiteRT",
            max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement,
            calibration_size=calibration_size,
        )  # fmt: skip
    elif samples is None:
        inputs = model_samples(model, None)
    else:
        inputs = labeled_samples(model, samples)[0]
    model = float32_copy(model)
    served = merged_for_export(model)
    steps = 2 if quantize is None else 3
    progress = Progress(f"LiteRT ({quantize or 'float32'})", steps, verbose, unit="step")
    with tempfile.TemporaryDirectory() as directory:
        source = _saved_model(served, directory)
        floating = os.path.join(directory, "float.tflite")
        _write(floating, convert(source))
        progress.update(1)
        with _atomic.publishing(path, overwrite=overwrite, suffix=SUFFIX) as temporary:
            if quantize is None:
                report = check_parity(model, floating, inputs, tolerance=tolerance)
                report = report.for_target(path)
                report.write(path + PARITY_SUFFIX)
                progress.update(2)
                progress.finish()
                if not report.passed:
                    raise ParityError(report)
                os.replace(floating, temporary)
                return path
            _write(temporary, convert(source, quantize, calibration))
            progress.update(2)
            method = f"LiteRT converter {quantize}" + (
                f" (full-integer, {len(calibration)} calibration images)"
                if quantize == "int8"
                else " (float16 weights)"
            )
            report = score(
                path, method, floating, temporary, _interpreter_probabilities(),
                0 if calibration is None else len(calibration), scored, labels,
                max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement,
            )  # fmt: skip
            progress.update(3)
            progress.finish()
            report.write(report_path(path))
            if not report.passed:
                raise QuantizationError(report)
    return path


def convert(saved_model_dir: str, quantize: str | None = None, calibration=None) -> bytes:
    """A LiteRT flatbuffer of a SavedModel's `serving_default` signature.

    Args:
        saved_model_dir: a SavedModel (see `_saved_model`).
        quantize: None, `"float16"` or `"int8"` (full-integer, float I/O).
        calibration: images for `"int8"`'s representative dataset.

    Returns:
        The `.tflite` bytes.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        images = np.asarray(calibration, np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with native_stderr_silenced():  # the converter's C++ log lines (all kept if it fails)
        return converter.convert()


def _interpreter_probabilities():
    runners = {}

    def predict(path, images):
        if path not in runners:
            runners[path] = LiteRTRunner(path)
        outputs = runners[path](images)
        return outputs["probabilities" if "probabilities" in outputs else "predictions"]

    return predict


def _saved_model(model: keras.Model, directory: str) -> str:
    """The model's `image_tensor` signature, as the one signature of a SavedModel."""
    archive = keras.export.ExportArchive()
    track_model(archive, model)  # each weight once (keras_export_fixes)
    archive.add_endpoint(
        "serving_default", serving_function(model, IMAGE_TENSOR, numeric_only=True)
    )
    path = os.path.join(directory, "saved_model")
    archive.write_out(path, verbose=False)
    return path


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
