"""Exporting the model of a run directory (`kerastl export`), whoever wrote it."""

from __future__ import annotations

import os

FORMATS = ("saved_model", "onnx", "litert", "bundle")
QUANTIZABLE = {"onnx": (None, "int8"), "litert": (None, "float16", "int8")}


def export_run(
    run_dir: str | os.PathLike,
    format: str = "bundle",
    *,
    output: str | os.PathLike | None = None,
    name: str | None = None,
    signatures=None,
    opset: int = 17,
    overwrite: bool = False,
    quantize: str | None = None,
    max_accuracy_drop: float | None = None,
    min_agreement: float | None = None,
    verbose: int | str = "auto",
) -> str:
    """Exports a run's final model, with its validation data as parity samples.

    Args:
        run_dir: a run directory (`kerastl train`, a recipe script or
            `FineTuner(run_dir=...)` followed by `write_report`): its
            `model.keras`, and `samples.npz` (else `config.yaml`'s
            validation data) for the parity check.
        format: `"saved_model"`, `"onnx"`, `"litert"` or `"bundle"` (TF Serving).
        output: the SavedModel directory, `.onnx` or `.tflite` file or bundle
            base directory; default `RUN_DIR/export/saved_model`,
            `RUN_DIR/export/model.onnx` (`model.int8.onnx`),
            `RUN_DIR/export/model.tflite` (`model.int8.tflite`...) or
            `RUN_DIR/export/serving`.
        name: the served model's name (bundle); default the run's name
            (`config.yaml`), else the directory's.
        signatures: as in `kerastl.export.saved_model`.
        opset: ONNX opset.
        overwrite: replace an existing SavedModel, ONNX or LiteRT file.
        quantize: `"int8"` (ONNX, LiteRT) or `"float16"` (LiteRT): calibrated
            and gated on the run's whole validation split (read again from
            `config.yaml`), see `kerastl.export.onnx`.
        max_accuracy_drop / min_agreement: the gate's bounds (None: the
            defaults of `kerastl.export.onnx`).
        verbose: progress of reading the validation split again (a quantized
            export of an image folder checks every file), converting and
            checking, as in `kerastl.export.saved_model`; `0` silent.

    Returns:
        The written path (the version directory for a bundle).

    Example:
        >>> export_run("runs/elpv-lite0", "onnx")
        'runs/elpv-lite0/export/model.onnx'
    """
    from kerastl import export
    from kerastl.app.config import load_config
    from kerastl.saving import load_model
    from kerastl.training.run_directory import CONFIG, MODEL

    run_dir = os.fspath(run_dir)
    _check_options(format, opset, quantize, max_accuracy_drop, min_agreement)
    model_path = os.path.join(run_dir, MODEL)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"{run_dir!r} is not a finished run directory: it has no {MODEL}.")
    config_path = os.path.join(run_dir, CONFIG)
    config = load_config(config_path) if os.path.isfile(config_path) else None
    samples = _parity_samples(run_dir, config, quantize, verbose)
    model = load_model(model_path, compile=False)
    stem = "model" if quantize is None else f"model.{quantize}"
    defaults = {
        "saved_model": "saved_model",
        "onnx": f"{stem}.onnx",
        "litert": f"{stem}.tflite",
        "bundle": "serving",
    }
    output = os.fspath(output or os.path.join(run_dir, "export", defaults[format]))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    gate = {
        key: value
        for key, value in (
            ("max_accuracy_drop", max_accuracy_drop),
            ("min_agreement", min_agreement),
        )
        if value is not None
    }
    common = {"samples": samples, "verbose": verbose}
    if format == "saved_model":
        return export.saved_model(model, output, signatures, overwrite=overwrite, **common)
    if format == "onnx":
        return export.onnx(
            model, output, opset=opset, overwrite=overwrite, quantize=quantize, **gate, **common
        )
    if format == "litert":
        return export.litert(
            model, output, overwrite=overwrite, quantize=quantize, **gate, **common
        )
    return export.serving_bundle(
        model,
        output,
        name or (config.name if config else os.path.basename(os.path.abspath(run_dir))),
        signatures=signatures,
        **common,
    )


def _check_options(format, opset, quantize, max_accuracy_drop, min_agreement) -> None:
    from kerastl.export.onnx_export import check_opset

    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}. Received: format={format!r}.")
    if format == "onnx":
        check_opset(opset)
    if quantize not in QUANTIZABLE.get(format, (None,)):
        raise ValueError(
            f"`quantize` for format {format!r} must be one of {QUANTIZABLE.get(format, (None,))}. "
            f"Received: quantize={quantize!r}."
        )
    if quantize is None and (max_accuracy_drop is not None or min_agreement is not None):
        raise ValueError(
            "`max_accuracy_drop` and `min_agreement` bound a quantized export: pass `quantize` "
            f"too. Received: max_accuracy_drop={max_accuracy_drop!r}, "
            f"min_agreement={min_agreement!r}, quantize=None."
        )


def _parity_samples(run_dir: str, config, quantize: str | None, verbose: int | str):
    """The samples an export is checked on: the run's `samples.npz`, or (for a
    quantized export, which is gated on it) its whole validation split."""
    from kerastl.app.data import load_data
    from kerastl.export.samples import load_samples
    from kerastl.training.run_directory import CONFIG, MODEL, SAMPLES

    samples = load_samples(os.path.join(run_dir, SAMPLES))
    if samples is None and config is not None:  # a run written before samples.npz existed
        samples = load_data(config, verbose=verbose).validation
    if samples is None:
        raise FileNotFoundError(
            f"{run_dir!r} has neither {SAMPLES} (written with {MODEL} when a run's report "
            f"is written with validation data) nor {CONFIG}: nothing to check the export on."
        )
    if quantize is None:
        return samples
    if config is None:
        raise FileNotFoundError(
            f"A {quantize} export is gated on the run's validation split, which {run_dir!r} "
            f"names in {CONFIG}; it has none."
        )
    samples = load_data(config, verbose=verbose).validation
    if samples is None:
        raise ValueError(
            f"A {quantize} export is gated on the run's validation split; "
            f"{os.path.join(run_dir, CONFIG)!r} names none (`data.validation_split` or "
            "`data.validation_fraction`)."
        )
    return samples
