"""`saved_model`: a SavedModel with serving signatures, checked against Keras."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import keras
import tensorflow as tf

from kerastl import _atomic
from kerastl._progress import Progress
from kerastl.export.core_tokenizer import CoreWordPiece, unsupported_reason
from kerastl.export.float32 import float32_copy
from kerastl.export.keras_export_fixes import track_model
from kerastl.export.options import ExportOptions
from kerastl.export.parity import (
    DEFAULT_TOLERANCE,
    PARITY_FILE,
    ParityError,
    saved_model_parity,
)
from kerastl.export.samples import detokenized, model_samples
from kerastl.export.signatures import (
    IMAGE_TENSOR_TTA,
    TEXT,
    check_signatures,
    model_forward,
    serving_function,
)
from kerastl.peft import merged_for_export

EXTRA_DIR = "assets.extra"


def saved_model(
    model: keras.Model,
    path: str | os.PathLike,
    signatures: str | Sequence[str] | None = None,
    *,
    samples=None,
    image_dtype: str = "float32",
    top_k: int = 5,
    preprocessor=None,
    sequence_length: int = 128,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    tta: str = "dihedral",
    verbose: int | str = "auto",
    antialias: bool = True,
) -> str:
    """Exports `model` as a SavedModel with serving signatures, if it matches Keras.

    Built on `keras.export.ExportArchive`. The model runs in inference mode
    (no dropout, no augmentation), in float32 even if trained under mixed
    precision. The export is written beside `path`, its tensor signature is
    compared with Keras on `samples` (the report goes to
    `assets.extra/parity.json`), and only then renamed to `path`: a failed or
    interrupted export leaves nothing at `path`.

    Args:
        model: a `TransferModel` (or a Keras model with one logits output).
        path: the SavedModel directory to create.
        signatures: signature names, the first one becoming `serving_default`;
            images: `image_bytes`, `image_tensor`, `tf_example`,
            `image_tensor_tta` (test-time augmentation in the graph); text:
            `token_ids`, `text` (see `kerastl.export.signatures`). Default:
            `("image_bytes", "image_tensor")`; for text `("text", "token_ids")`
            when the model's tokenizer runs in core TF ops (WordPiece), else
            `("token_ids",)`. The tensor signature (`image_tensor`/`token_ids`)
            is always included.
        samples: real inputs for the parity check (images `[n, H, W, 3]` in
            [0, 255], token dicts, raw strings, or a `tf.data` dataset); None:
            random ones. The `text` signature is checked on the raw strings
            (or on the token samples written back as text).
        image_dtype: `"float32"` or `"uint8"` for `image_tensor`.
        top_k: labels in the `class_name` output.
        preprocessor: KerasHub text preprocessor for the `text` signature
            (default: the model's own, else the registered backbone's at
            `sequence_length`). A WordPiece one runs in core TF ops
            (`kerastl.export.core_tokenizer`, stock TF Serving runs it); any
            other keeps its TF-Text kernels, with a warning.
        sequence_length: token length of the registered backbone's
            preprocessor, for a model without its own.
        tolerance: largest absolute difference of probabilities allowed.
        overwrite: replace an existing export at `path`.
        tta: the views `image_tensor_tta` averages over: `dihedral` (8) or
            `flip` (2); it is parity-checked against `kerastl.predict_probabilities`.
        verbose: progress of writing and checking: `0` silent, `1` a bar, `2`
            a line when a step ends after a few seconds, `"auto"` by the output.
        antialias: how `image_bytes` and `tf_example` resize a decoded image
            to the model's size, which must be how the training images were
            resized: True (bilinear with antialiasing) as kerastl's image
            sources (`image_folder`, TFDS through kerastl) do; False as
            `keras.utils.image_dataset_from_directory` and `tf.image.resize`
            do by default. The parity check cannot tell: it sends images at
            the model's size.

    Returns:
        `path`.

    Raises:
        ParityError: the export disagrees with Keras (nothing is written).
        FileExistsError: `path` exists and `overwrite` is False.

    Example:
        >>> kerastl.export.saved_model(model, "out/serving/flowers/1",
        ...                            signatures=("image_bytes", "image_tensor"))
    """
    path = os.fspath(path)
    options = ExportOptions(
        image_dtype, top_k, preprocessor, sequence_length, tolerance, tta, verbose, antialias
    )
    with _atomic.publishing(path, overwrite=overwrite) as temporary:
        write_saved_model(
            model, temporary, signatures, samples=samples, options=options, published_as=path
        )
    return path


def write_saved_model(
    model: keras.Model,
    directory: str,
    signatures=None,
    *,
    samples=None,
    options: ExportOptions | None = None,
    published_as: str | None = None,
):
    """Writes the SavedModel into `directory` (not atomic) and checks parity.

    `published_as` names the final path in the parity report; `options.verbose`
    shows its two steps (writing, parity) as `kerastl._progress.Progress`.

    Returns:
        The SavedModel as `tf.saved_model.load` gives it: the one load its
        parity checks ran on, for the caller's own (the bundle's op scan and
        warmup requests). The parity report is in `assets.extra/parity.json`.

    Raises:
        ParityError: the export disagrees with Keras.
    """
    options = options or ExportOptions(verbose=0)
    names = check_signatures(model, signatures)
    samples = model_samples(model, samples)  # bad samples fail before the slow export
    model = float32_copy(model)
    served = merged_for_export(model)  # LoRA adapters folded in; parity against the unmerged
    preprocessor = text_preprocessor(model, names, options.preprocessor, options.sequence_length)
    tolerance, tta = options.tolerance, options.tta
    if TEXT in names and TEXT not in samples:  # the `text` signature is checked on strings too
        samples = {**samples, TEXT: detokenized(preprocessor, samples)}
    archive = keras.export.ExportArchive()
    track_model(archive, served)  # each weight once (keras_export_fixes)
    tokenizer = text_tokenizer(preprocessor) if TEXT in names else None
    if tokenizer is not None:
        archive.track(tokenizer)
    forward = model_forward(served)
    for name in names:
        function = serving_function(
            served,
            name,
            image_dtype=options.image_dtype,
            top_k=options.top_k,
            preprocessor=tokenizer,
            tta=tta,
            forward=forward,
            antialias=options.antialias,
        )
        archive.add_endpoint(name, function)
    what = f"SavedModel ({', '.join(names)}): writing, then checking it against Keras"
    progress = Progress(what, 2, options.verbose, unit="step", interval=0.0)
    archive.write_out(directory, verbose=False)
    progress.update(1)
    os.makedirs(os.path.join(directory, EXTRA_DIR), exist_ok=True)
    loaded = tf.saved_model.load(directory)  # once, for every check and the caller's
    report = saved_model_parity(
        model, loaded, directory, samples, tolerance=tolerance,
        text=(preprocessor, samples[TEXT]) if TEXT in names and TEXT in samples else None,
        tta=tta if IMAGE_TENSOR_TTA in names else None,
    )  # fmt: skip
    progress.update(2)
    progress.finish()
    if published_as is not None:
        report = report.for_target(published_as)
    report.write(os.path.join(directory, EXTRA_DIR, PARITY_FILE))
    if not report.passed:
        raise ParityError(report)
    return loaded


def text_tokenizer(preprocessor):
    """What the `text` signature tokenizes with: core TF ops where they can.

    A WordPiece preprocessor becomes a `CoreWordPiece` (the same token ids,
    stock TF Serving runs it); any other keeps its TF-Text kernels, with a
    warning that stock TF Serving cannot load the signature.
    """
    reason = unsupported_reason(preprocessor)
    if reason is None:
        return CoreWordPiece(preprocessor)
    warnings.warn(
        f"The `text` signature tokenizes with TF-Text ops, since {reason}; stock TF Serving "
        "(and TF Lite, ONNX) cannot run them: serve it with a TF Serving build that links "
        "tensorflow-text, or send `token_ids` instead.",
        UserWarning,
        stacklevel=4,
    )
    return preprocessor


def text_preprocessor(model: keras.Model, names, preprocessor, sequence_length: int):
    """The preprocessor the `text` signature uses (None without that signature).

    The one passed; else the model's own (`model.preprocessor`: the tokenizer
    it trained with, saved in its `.keras` file); else the registered
    backbone's at `sequence_length`. Built (on an empty string if it never
    ran), since an export can only track built layers.
    """
    if TEXT not in names:
        return preprocessor
    if preprocessor is None:
        preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None:
        from kerastl.backbones.tokenizers import create_text_preprocessor

        name = getattr(model, "backbone_name", None)
        if name is None:
            raise ValueError(
                "The `text` signature needs a `preprocessor` for a model whose backbone is "
                "not registered."
            )
        preprocessor = create_text_preprocessor(name, sequence_length=sequence_length)
    if not preprocessor.built:
        import tensorflow as tf

        preprocessor(tf.constant([""]))
    return preprocessor
