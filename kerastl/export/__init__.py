"""Export: SavedModel with serving signatures, a TF Serving bundle, ONNX, LiteRT, parity checks.

Example:
    >>> kerastl.export.saved_model(model, "out/serving/elpv/1")
    >>> kerastl.export.serving_bundle(model, "out/serving", "elpv", samples=val_images)
    >>> kerastl.export.onnx(model, "out/model.onnx", samples=val_images)
    >>> kerastl.export.onnx(model, "out/model.int8.onnx", samples=val_ds, quantize="int8")
    >>> kerastl.export.litert(model, "out/model.int8.tflite", samples=val_ds, quantize="int8")
"""

from kerastl.export.bundle import next_version, serving_bundle, write_models_config
from kerastl.export.float32 import float32_copy
from kerastl.export.litert_export import litert
from kerastl.export.litert_runtime import run_litert
from kerastl.export.onnx_export import UnsupportedOpsError, onnx
from kerastl.export.parity import ParityError, ParityReport, ParityResult, check_parity
from kerastl.export.quantization import QuantizationError, QuantizationReport
from kerastl.export.saved_model_export import saved_model
from kerastl.export.serving_ops import UnsupportedServingOpsError, scan_serving_ops

__all__ = [
    "ParityError",
    "ParityReport",
    "ParityResult",
    "QuantizationError",
    "QuantizationReport",
    "UnsupportedOpsError",
    "UnsupportedServingOpsError",
    "check_parity",
    "float32_copy",
    "litert",
    "next_version",
    "onnx",
    "run_litert",
    "saved_model",
    "scan_serving_ops",
    "serving_bundle",
    "write_models_config",
]
