"""Running `.onnx` files in onnxruntime on kerastl's inputs (images, or token dicts)."""

from __future__ import annotations

import numpy as np

from kerastl.export.onnxruntime_fixes import exact_int8_on_cpus_without_vnni

_NUMPY = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32}


def onnx_session(path: str, *, optimize: bool = True):
    """An onnxruntime CPU session for an ONNX file, int8 products exact on any x86 CPU.

    Args:
        path: an `.onnx` file.
        optimize: False: onnxruntime's graph optimizations off.

    Returns:
        An `onnxruntime.InferenceSession`.

    Example:
        >>> onnx_session("out/model.onnx").get_inputs()[0].name
        'images'
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    exact_int8_on_cpus_without_vnni(options)  # else int8 files saturate there (onnxruntime_fixes)
    if not optimize:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs, outputs=None, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Runs a session on images (`images`) or a dict of token arrays, cast to its input types.

    Args:
        session: from `onnx_session`.
        inputs: an image array or a dict of arrays named as the file's inputs.
        outputs: output names (default: all).
        batch_size: rows per call (default: all at once).

    Returns:
        Output name → array over all rows.

    Example:
        >>> run_onnx(onnx_session("out/model.onnx"), images, ["probabilities"])["probabilities"]
    """
    named = inputs if isinstance(inputs, dict) else {"images": inputs}
    names = list(outputs or [output.name for output in session.get_outputs()])
    count = len(next(iter(named.values())))
    step = batch_size or max(count, 1)
    chunks = []
    for start in range(0, count, step):
        feed = {
            spec.name: np.asarray(named[spec.name][start : start + step]).astype(_NUMPY[spec.type])
            for spec in session.get_inputs()
        }
        chunks.append(session.run(names, feed))
    return {name: np.concatenate([chunk[i] for chunk in chunks]) for i, name in enumerate(names)}
