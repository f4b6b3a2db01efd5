"""`serving_bundle`: a versioned, atomically published TF Serving model directory."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from collections.abc import Sequence

import keras

from kerastl import _atomic
from kerastl._validation import check_positive_int
from kerastl.export.options import ExportOptions
from kerastl.export.parity import DEFAULT_TOLERANCE
from kerastl.export.requests import (
    MAX_WARMUP_RECORDS,
    WARMUP_FILE,
    predict_request,
    rest_body,
    rest_response,
    run_signature,
    signature_inputs,
    write_warmup,
)
from kerastl.export.samples import detokenized, model_samples
from kerastl.export.saved_model_export import EXTRA_DIR, text_preprocessor, write_saved_model
from kerastl.export.serving_ops import UnsupportedServingOpsError, unsupported_ops
from kerastl.export.signatures import TEXT, check_signatures

MODELS_CONFIG = "models.config"
REQUESTS_DIR = "requests"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ON_UNSUPPORTED = ("raise", "warn")


def serving_bundle(
    model: keras.Model,
    base_dir: str | os.PathLike,
    name: str,
    *,
    version: int | None = None,
    signatures: str | Sequence[str] | None = None,
    samples=None,
    warmup_requests: int = 8,
    on_unsupported_ops: str = "raise",
    num_versions: int = 2,
    image_dtype: str = "float32",
    top_k: int = 5,
    preprocessor=None,
    sequence_length: int = 128,
    tolerance: float = DEFAULT_TOLERANCE,
    tta: str = "dihedral",
    verbose: int | str = "auto",
    antialias: bool = True,
) -> str:
    """Writes `base_dir/name/<version>/` for TF Serving, published atomically.

    The version is built in a hidden sibling directory, checked (parity with
    Keras, op scan), fsynced and then renamed into place, so a TF Serving
    poller never sees a half-written version and an interrupted export
    leaves no version behind. The version directory holds the SavedModel
    (see `saved_model`) and `assets.extra/`: `tf_serving_warmup_requests`
    (batch-1 `PredictionLog`s of every signature, built from `samples`),
    `parity.json`, and `requests/<signature>.json` REST bodies with the
    `<signature>.response.json` the model answers. `base_dir/models.config`
    gains (or updates) the model's entry.

    Args:
        model: the model to serve.
        base_dir: the model server's base directory.
        name: the served model's name (letters, digits, `_.-`).
        version: the version number; default: one above the highest.
        signatures: as in `saved_model`.
        samples: real validation inputs (as in `saved_model`); they make the
            parity check, the warmup records and the example requests.
        warmup_requests: warmup records per signature (total at most 1000).
        on_unsupported_ops: `"raise"` (nothing is published) or `"warn"`
            when a signature uses ops stock TF Serving lacks.
        num_versions: how many latest versions `models.config` serves.
        image_dtype: as in `saved_model`.
        top_k: as in `saved_model`.
        preprocessor: as in `saved_model`.
        sequence_length: as in `saved_model`.
        tolerance: as in `saved_model`.
        tta: as in `saved_model`.
        verbose: as in `saved_model`.
        antialias: as in `saved_model`: resize served images as the
            training images were.

    Returns:
        The published version directory.

    Raises:
        ParityError: the export disagrees with Keras.
        UnsupportedServingOpsError: a signature needs ops stock TF Serving
            lacks and `on_unsupported_ops="raise"`.

    Example:
        >>> kerastl.export.serving_bundle(model, "serving", "elpv", samples=val_images)
        'serving/elpv/1'
    """
    base_dir = os.fspath(base_dir)
    _validate(name, version, warmup_requests, on_unsupported_ops, num_versions)
    names = check_signatures(model, signatures)
    if warmup_requests * len(names) > MAX_WARMUP_RECORDS:
        raise ValueError(
            f"warmup_requests={warmup_requests} for {len(names)} signatures exceeds TF "
            f"Serving's {MAX_WARMUP_RECORDS} records."
        )
    model_dir = os.path.join(base_dir, name)
    os.makedirs(model_dir, exist_ok=True)
    _remove_abandoned(model_dir)
    version = version if version is not None else next_version(model_dir)
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"Version {version} of {name!r} exists: {final!r}.")
    options = ExportOptions(
        image_dtype, top_k, preprocessor, sequence_length, tolerance, tta, verbose, antialias
    )
    preprocessor = text_preprocessor(model, names, preprocessor, sequence_length)
    options = dataclasses.replace(options, preprocessor=preprocessor)
    samples = model_samples(model, samples)
    if TEXT in names and TEXT not in samples:
        samples = {**samples, TEXT: detokenized(preprocessor, samples)}
    with _atomic.publishing(final) as temporary:
        loaded = write_saved_model(
            model, temporary, names, samples=samples, options=options, published_as=final
        )
        _check_ops(loaded, final, on_unsupported_ops)
        _write_requests(loaded, temporary, name, names, samples, warmup_requests, image_dtype)
    write_models_config(base_dir, name, num_versions)
    return final


def next_version(model_dir: str | os.PathLike) -> int:
    """The version number a new export of a served model gets.

    Args:
        model_dir: the model's directory (`base_dir/name`).

    Returns:
        One above the highest integer version directory (1 if none);
        hidden temporary directories and other names do not count.

    Example:
        >>> kerastl.export.next_version("serving/elpv")  # with 1/ and 2/ there
        3
    """
    versions = [int(entry) for entry in os.listdir(model_dir) if entry.isdigit()]
    return max(versions, default=0) + 1


def write_models_config(base_dir: str, name: str, num_versions: int = 2) -> str:
    """Adds or updates `name` in `base_dir/models.config` (text proto), atomically.

    Other models' entries are kept, so one file serves every bundle in `base_dir`.

    Args:
        base_dir: the model server's base directory.
        name: the served model's name (its versions are in `base_dir/name`).
        num_versions: how many of the latest versions the server keeps loaded.

    Returns:
        The config file's path.

    Example:
        >>> write_models_config("serving", "elpv")  # --model_config_file=serving/models.config
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = os.path.join(base_dir, MODELS_CONFIG)
    config = model_server_config_pb2.ModelServerConfig()
    if os.path.exists(path):
        with open(path) as file:
            text_format.Parse(file.read(), config)
    entries = config.model_config_list.config
    entry = next((e for e in entries if e.name == name), None) or entries.add()
    entry.name = name
    entry.base_path = os.path.abspath(os.path.join(base_dir, name))
    entry.model_platform = "tensorflow"
    entry.model_version_policy.latest.num_versions = num_versions
    _atomic.write_text(path, text_format.MessageToString(config))
    return path


def _check_ops(loaded, final: str, on_unsupported_ops: str) -> None:
    unsupported = unsupported_ops(loaded)
    if not unsupported:
        return
    error = UnsupportedServingOpsError(unsupported, final)
    if on_unsupported_ops == "raise":
        raise error
    warnings.warn(str(error), UserWarning, stacklevel=3)


def _write_requests(loaded, directory, model_name, names, samples, per_signature, image_dtype):
    extra = os.path.join(directory, EXTRA_DIR)
    os.makedirs(os.path.join(extra, REQUESTS_DIR), exist_ok=True)
    warmup = []
    for signature in names:
        inputs = signature_inputs(signature, samples, image_dtype=image_dtype)
        example = {key: value[:2] for key, value in inputs.items()}
        outputs = run_signature(loaded.signatures[signature], example)
        _write_json(
            os.path.join(extra, REQUESTS_DIR, f"{signature}.json"), rest_body(signature, example)
        )
        _write_json(
            os.path.join(extra, REQUESTS_DIR, f"{signature}.response.json"), rest_response(outputs)
        )
        count = min(per_signature, len(next(iter(inputs.values()))))
        warmup += [
            predict_request(model_name, signature, {k: v[i : i + 1] for k, v in inputs.items()})
            for i in range(count)
        ]
    if warmup:
        write_warmup(os.path.join(extra, WARMUP_FILE), warmup)


def _remove_abandoned(model_dir: str) -> None:
    """Deletes temporary versions left by an export process that no longer runs."""
    for entry in os.listdir(model_dir):
        if not entry.startswith(_atomic.TEMP_PREFIX):
            continue
        parts = entry.split("-")
        pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
        if pid is not None and not _alive(pid):
            _atomic.remove(os.path.join(model_dir, entry))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: str, data) -> None:
    with open(path, "w") as file:
        json.dump(data, file)
        file.write("\n")


def _validate(name, version, warmup_requests, on_unsupported_ops, num_versions):
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            "`name` must be letters, digits, '_', '.' or '-', starting with a letter or "
            f"digit. Received: name={name!r}."
        )
    if version is not None:
        check_positive_int("version", version)
    check_positive_int("num_versions", num_versions)
    if isinstance(warmup_requests, bool) or not isinstance(warmup_requests, int):
        raise ValueError(
            "`warmup_requests` must be an integer >= 0. "
            f"Received: warmup_requests={warmup_requests!r}."
        )
    if warmup_requests < 0:
        raise ValueError(f"`warmup_requests` must be >= 0. Received: {warmup_requests}.")
    if on_unsupported_ops not in _ON_UNSUPPORTED:
        raise ValueError(
            f"`on_unsupported_ops` must be one of {_ON_UNSUPPORTED}. "
            f"Received: on_unsupported_ops={on_unsupported_ops!r}."
        )
