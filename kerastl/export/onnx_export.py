"""`onnx`: an ONNX export through tf2onnx, refused when ops are missing or parity fails."""

from __future__ import annotations

import logging
import os
import re

import keras
import numpy as np

from kerastl import _atomic
from kerastl._progress import Progress
from kerastl.export.float32 import float32_copy
from kerastl.export.onnx_runtime import onnx_session, run_onnx
from kerastl.export.onnxruntime_fixes import unused_gemm_beta
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
from kerastl.export.samples import model_samples, sample_count
from kerastl.export.signatures import (
    IMAGE_TENSOR_TTA,
    STRING_INPUT_SIGNATURES,
    check_signatures,
    is_text_model,
    serving_function,
    tensor_signature,
)
from kerastl.export.tf2onnx_fixes import captured_constants_as_initializers, tf2onnx_fixes
from kerastl.peft import merged_for_export

MAX_OPSET = 18  # tf2onnx 1.17 fails from opset 19
MIN_OPSET = 13
BATCH_DIM = "batch"
SEQUENCE_DIM = "sequence"
QUANTIZE_ONNX = (None, "int8")
_UNSUPPORTED_LOG = re.compile(r"Tensorflow op \[.*?: (\w+)\] is not supported")


class UnsupportedOpsError(RuntimeError):
    """tf2onnx left ops in the graph that ONNX does not define.

    tf2onnx 1.17 logs `Tensorflow op [...] is not supported`, exits
    successfully and writes a file onnxruntime rejects; this is raised instead.

    Attributes:
        ops: the unconverted op names, sorted.
    """

    def __init__(self, ops: list[str], signature: str):
        self.ops = ops
        hint = ""
        if signature in STRING_INPUT_SIGNATURES:
            hint = (
                f" The `{signature}` signature decodes or tokenizes strings in the graph, which "
                "ONNX cannot: export the tensor signature and decode/tokenize in the client."
            )
        super().__init__(
            f"tf2onnx could not convert the ops {ops} of the `{signature}` signature; "
            f"the ONNX file was not written.{hint}"
        )


def onnx(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    signature: str | None = None,
    samples=None,
    image_dtype: str = "float32",
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    fixes: bool = True,
    quantize: str | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    verbose: int | str = "auto",
) -> str:
    """Exports `model` to ONNX with tf2onnx, if every op converts and it matches Keras.

    Inputs keep their signature names (`images`, or the token inputs) with a
    dynamic `batch` dimension (and `sequence` for tokens); outputs are
    `logits`, `probabilities`, `class_id` and `top_k_probabilities` (or
    `predictions` for regression), float32. The file is written beside `path`,
    compared with Keras under onnxruntime on `samples`, and renamed to `path`
    only if it passes; the report goes to `<path>.parity.json` (`model.onnx.parity.json`).

    Args:
        model: a `TransferModel` (or a Keras model with one logits output).
        path: the `.onnx` file to create.
        opset: ONNX opset, 13 to 18 (tf2onnx 1.17 fails from 19).
        signature: which signature to convert; default the tensor one
            (`image_tensor`/`token_ids`). String-input signatures cannot
            convert (e.g. `image_bytes` needs `DecodeJpeg`) and raise.
        samples: real inputs: images, token dicts or raw strings, a tuple
            `(inputs, labels)`, or a `tf.data` dataset of `(inputs, labels)`
            batches. The parity check takes the first 8; an int8 export is
            calibrated and scored on all (labels let the gate score
            accuracy). None: random inputs (float32 only).
        image_dtype: `"float32"` or `"uint8"` for the `images` input.
        tolerance: largest absolute difference of probabilities allowed.
        overwrite: replace an existing file.
        fixes: apply kerastl's tf2onnx fixes (`kerastl.export.tf2onnx_fixes`).
        quantize: None (float32), or `"int8"`: onnxruntime's static QDQ
            quantization (int8 per-channel weights, uint8 activations,
            min-max ranges) calibrated on `samples` for image models; dynamic
            int8 (every weight matrix, the attention projections included,
            quantized; activations at run time) for text models. The int8
            file is published only if it passes the gate
            (`kerastl.export.quantization`); its report goes to
            `<path>.quantization.json`.
        max_accuracy_drop: the int8 file's largest accuracy drop allowed,
            on the labelled `samples` it was not calibrated on.
        min_agreement: the smallest fraction of those samples allowed to
            keep the float model's top-1 class.
        calibration_size: most samples the quantizer calibrates on (at most
            half of `samples`: the rest score it).
        verbose: progress of converting and checking, as in `saved_model`.

    Returns:
        `path`.

    Raises:
        UnsupportedOpsError: ops tf2onnx could not convert (named).
        ParityError: onnxruntime disagrees with Keras.
        QuantizationError: the int8 file is outside the bounds (nothing is
            published; the measurements are in the error and the report).

    Example:
        >>> kerastl.export.onnx(model, "out/model.onnx", samples=val_images)
        'out/model.onnx'
        >>> kerastl.export.onnx(model, "out/model.int8.onnx", samples=val_ds, quantize="int8")
        'out/model.int8.onnx'
    """
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"`path` must end in '.onnx'. Received: path={path!r}.")
    check_opset(opset)
    signature = signature or tensor_signature(model)
    check_signatures(model, signature)
    if signature == IMAGE_TENSOR_TTA:
        raise ValueError(
            f"ONNX exports one signature checked against the plain model; `{IMAGE_TENSOR_TTA}` "
            "averages test-time views: export it in a SavedModel (`saved_model`). "
            f"Received: signature={signature!r}."
        )
    _atomic.check_destination(path, overwrite)
    if quantize not in QUANTIZE_ONNX:
        raise ValueError(
            f"`quantize` must be one of {QUANTIZE_ONNX}. Received: quantize={quantize!r}."
        )
    # Bad samples (too few to calibrate and score, labels that do not fit) fail here,
    # before the slow conversion.
    if quantize is not None:
        samples, *gate = gated_samples(
            model, samples, calibrates=not is_text_model(model), what="int8 ONNX",
            max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement,
            calibration_size=calibration_size,
        )  # fmt: skip
    elif samples is not None:
        samples = labeled_samples(model, samples)[0]
    samples = model_samples(model, samples)
    model = float32_copy(model)
    served = merged_for_export(model)  # LoRA adapters folded in; parity against the unmerged
    what = f"ONNX (opset {opset}): converting, then checking it against Keras"
    progress = Progress(what, 2, verbose, unit="step", interval=0.0)
    proto = convert(served, signature, opset, image_dtype=image_dtype, fixes=fixes)
    progress.update(1)
    with _atomic.publishing(path, overwrite=overwrite, suffix=".onnx") as temporary:
        with open(temporary, "wb") as file:
            file.write(proto.SerializeToString())
        report = check_parity(model, temporary, samples, tolerance=tolerance)
        progress.update(2)
        progress.finish()
        if quantize is None:
            report = report.for_target(path)
            report.write(path + PARITY_SUFFIX)
        if not report.passed:
            raise ParityError(report)
        if quantize is not None:
            _quantized_in_place(
                temporary, path, *gate, image_dtype=image_dtype,
                max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement, verbose=verbose,
            )  # fmt: skip
    return path


def _quantized_in_place(
    file, path, calibration, scored, labels, *, image_dtype, max_accuracy_drop, min_agreement,
    verbose,
):  # fmt: skip
    """Replaces the float ONNX `file` by its int8 version if that passes the gate.

    Images calibrate static quantization (`calibration`); text is quantized
    dynamically (`calibration` None). Both are scored on `scored`.
    """
    floating = file + ".float.onnx"
    os.replace(file, floating)
    try:
        progress = Progress("ONNX int8: quantizing, then scoring it", 2, verbose, unit="step")
        method = quantize_onnx(floating, file, calibration, image_dtype=image_dtype)
        progress.update(1)
        sessions = {}

        def predict(onnx_file, inputs):
            if onnx_file not in sessions:
                sessions[onnx_file] = onnx_session(onnx_file)
            return onnx_probabilities(sessions[onnx_file], inputs)

        report = score(
            path, method, floating, file, predict,
            0 if calibration is None else sample_count(calibration),
            scored, labels, max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement,
        )  # fmt: skip
        progress.update(2)
        progress.finish()
    finally:
        os.remove(floating)
    report.write(report_path(path))
    if not report.passed:
        raise QuantizationError(report)


def quantize_onnx(
    source: str, target: str, calibration=None, *, image_dtype: str = "float32"
) -> str:
    """Writes the int8 version of the ONNX file `source` to `target`.

    Args:
        source: a float ONNX file (from `convert`).
        target: where the int8 file goes.
        calibration: images (`[n, H, W, 3]`) for static quantization; None:
            dynamic quantization (text transformers: every `MatMul` and
            `Gemm` weight in int8, activations quantized at run time).
        image_dtype: the dtype of the file's `images` input.

    Returns:
        What was done, for the report.

    Example:
        >>> quantize_onnx("model.onnx", "model.int8.onnx", val_images[:256])
        'onnxruntime static QDQ int8 (per-channel weights, min-max, 256 images)'
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target + ".prepared.onnx"
    quant_pre_process(source, prepared, skip_symbolic_shape=True)
    try:
        if calibration is None:
            proto = onnx.load(prepared)
            unused_gemm_beta(proto)  # else bias-less Gemms stay float (onnxruntime_fixes)
            onnx.save(proto, prepared)
            quantize_dynamic(prepared, target, per_channel=True, weight_type=QuantType.QInt8)
            return "onnxruntime dynamic int8 (per-channel weights)"
        quantize_static(
            prepared,
            target,
            _Calibration(calibration, image_dtype),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        os.remove(prepared)
    return f"onnxruntime static QDQ int8 (per-channel weights, min-max, {len(calibration)} images)"


def onnx_probabilities(session, inputs, batch_size: int = 64) -> np.ndarray:
    """The `probabilities` (or `predictions`) of an onnxruntime session on `inputs`, in batches."""
    names = [output.name for output in session.get_outputs()]
    output = "probabilities" if "probabilities" in names else "predictions"
    return run_onnx(session, inputs, [output], batch_size)[output]


class _Calibration:
    """onnxruntime's calibration reader over images, one at a time (its
    percentile and entropy collectors fail on batches of unequal size)."""

    def __init__(self, images, dtype: str):
        self._rows = iter(images)
        self._dtype = dtype

    def get_next(self):
        row = next(self._rows, None)
        return None if row is None else {"images": row[None].astype(self._dtype)}


def check_opset(opset: int) -> None:
    """Raises `ValueError` unless `opset` is one tf2onnx 1.17 can write."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(
            f"`opset` must be an integer from {MIN_OPSET} to {MAX_OPSET} (tf2onnx 1.17 "
            f"supports no later opset). Received: opset={opset!r}."
        )


def convert(model: keras.Model, signature: str, opset: int, *, image_dtype="float32", fixes=True):
    """Converts one signature of a float32 model to an ONNX `ModelProto`.

    Raises:
        UnsupportedOpsError: tf2onnx left ops ONNX does not define.
    """
    import tf2onnx

    function = serving_function(model, signature, image_dtype=image_dtype, numeric_only=True)
    logged = _LoggedUnsupportedOps()
    tf2onnx_logger = logging.getLogger("tf2onnx")
    tf2onnx_logger.addHandler(logged)
    try:
        with tf2onnx_fixes(fixes):
            proto, _ = tf2onnx.convert.from_function(
                function, input_signature=function.input_signature, opset=opset
            )
    finally:
        tf2onnx_logger.removeHandler(logged)
    if fixes:
        captured_constants_as_initializers(proto, function)
    unsupported = sorted(set(logged.ops) | set(undefined_ops(proto)))
    if unsupported:
        raise UnsupportedOpsError(unsupported, signature)
    _name_dynamic_dims(proto)
    return proto


def undefined_ops(proto) -> list[str]:
    """Op types in an ONNX graph that no ONNX opset defines (left by tf2onnx)."""
    import onnx as onnx_lib

    return sorted(
        {
            node.op_type
            for node in proto.graph.node
            if not onnx_lib.defs.has(node.op_type, node.domain or "")
        }
    )


def _name_dynamic_dims(proto) -> None:
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            dim.dim_param = BATCH_DIM if axis == 0 else SEQUENCE_DIM


class _LoggedUnsupportedOps(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.ops: list[str] = []

    def emit(self, record):
        match = _UNSUPPORTED_LOG.search(record.getMessage())
        if match:
            self.ops.append(match.group(1))
