"""`onnx`: an ONNX export through tf2onnx, refused when ops are missing or parity fails."""

from __future__ import annotations

import logging
import os
import re

import keras

from kerastl import _atomic
from kerastl._progress import Progress
from kerastl.export.float32 import float32_copy
from kerastl.export.parity import DEFAULT_TOLERANCE, ParityError, check_parity
from kerastl.export.samples import model_samples
from kerastl.export.signatures import (
    IMAGE_TENSOR_TTA,
    STRING_INPUT_SIGNATURES,
    check_signatures,
    serving_function,
    tensor_signature,
)
from kerastl.export.tf2onnx_fixes import tf2onnx_fixes
from kerastl.peft import merged_for_export

MAX_OPSET = 18  # tf2onnx 1.17 fails from opset 19
MIN_OPSET = 13
BATCH_DIM = "batch"
SEQUENCE_DIM = "sequence"
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
    verbose: int | str = "auto",
) -> str:
    """Exports `model` to ONNX with tf2onnx, if every op converts and it matches Keras.

    Inputs keep their signature names (`images`, or the token inputs) with a
    dynamic `batch` dimension (and `sequence` for tokens); outputs are
    `logits`, `probabilities`, `class_id` and `top_k_probabilities` (or
    `predictions` for regression), float32. The file is written beside `path`,
    compared with Keras under onnxruntime on `samples`, and renamed to `path`
    only if it passes; the report goes to `<path without .onnx>.parity.json`.

    Args:
        model: a `TransferModel` (or a Keras model with one logits output).
        path: the `.onnx` file to create.
        opset: ONNX opset, 13 to 18 (tf2onnx 1.17 fails from 19).
        signature: which signature to convert; default the tensor one
            (`image_tensor`/`token_ids`). String-input signatures cannot
            convert (e.g. `image_bytes` needs `DecodeJpeg`) and raise.
        samples: real inputs for the parity check; None: random ones.
        image_dtype: `"float32"` or `"uint8"` for the `images` input.
        tolerance: largest absolute difference of probabilities allowed.
        overwrite: replace an existing file.
        fixes: apply kerastl's tf2onnx fixes (`kerastl.export.tf2onnx_fixes`).
        verbose: progress of converting and checking, as in `saved_model`.

    Returns:
        `path`.

    Raises:
        UnsupportedOpsError: ops tf2onnx could not convert (named).
        ParityError: onnxruntime disagrees with Keras.

    Example:
        >>> kerastl.export.onnx(model, "out/model.onnx", samples=val_images)
        'out/model.onnx'
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
    samples = model_samples(model, samples)  # bad samples fail before the slow conversion
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
        report_path = path[: -len(".onnx")] + ".parity.json"
        report = report.for_target(path)
        report.write(report_path)
        if not report.passed:
            raise ParityError(report)
    return path


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
