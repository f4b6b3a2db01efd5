"""Exporting the model of a `kerastl train` run directory (`kerastl export`)."""

from __future__ import annotations

import os

FORMATS = ("saved_model", "onnx", "bundle")
MODEL_FILE = "model.keras"


def export_run(
    run_dir: str | os.PathLike,
    format: str = "bundle",
    *,
    output: str | os.PathLike | None = None,
    name: str | None = None,
    signatures=None,
    opset: int = 17,
    overwrite: bool = False,
) -> str:
    """Exports a run's final model, with its validation data as parity samples.

    Args:
        run_dir: a run directory written by `kerastl train`.
        format: `"saved_model"`, `"onnx"` or `"bundle"` (TF Serving).
        output: the SavedModel directory, `.onnx` file or bundle base
            directory; default `RUN_DIR/export/saved_model`,
            `RUN_DIR/export/model.onnx` or `RUN_DIR/export/serving`.
        name: the served model's name (bundle); default the run's name.
        signatures: as in `kerastl.export.saved_model`.
        opset: ONNX opset.
        overwrite: replace an existing SavedModel or ONNX file.

    Returns:
        The written path (the version directory for a bundle).

    Example:
        >>> export_run("runs/elpv-lite0", "onnx")
        'runs/elpv-lite0/export/model.onnx'
    """
    from kerastl import export
    from kerastl.app.config import load_config
    from kerastl.data import load_data
    from kerastl.export.onnx_export import check_opset
    from kerastl.saving import load_model

    run_dir = os.fspath(run_dir)
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}. Received: format={format!r}.")
    if format == "onnx":
        check_opset(opset)
    model_path = os.path.join(run_dir, MODEL_FILE)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(
            f"{run_dir!r} is not a finished run directory: it has no {MODEL_FILE}."
        )
    config = load_config(os.path.join(run_dir, "config.yaml"))
    model = load_model(model_path, compile=False)
    samples = load_data(config).validation
    defaults = {"saved_model": "saved_model", "onnx": "model.onnx", "bundle": "serving"}
    output = os.fspath(output or os.path.join(run_dir, "export", defaults[format]))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if format == "saved_model":
        return export.saved_model(model, output, signatures, samples=samples, overwrite=overwrite)
    if format == "onnx":
        return export.onnx(model, output, opset=opset, samples=samples, overwrite=overwrite)
    return export.serving_bundle(
        model, output, name or config.name, signatures=signatures, samples=samples
    )
