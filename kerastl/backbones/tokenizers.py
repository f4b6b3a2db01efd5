"""Text preprocessors (tokenizer + packer) for the registered text backbones."""

from __future__ import annotations

import os
import weakref

from kerastl.backbones import assets
from kerastl.backbones.hub_access import hf_offline, load_from_hub, preset_host
from kerastl.backbones.registry import get_spec
from kerastl.backbones.spec import TEXT

_TEXT_PREPROCESSORS = {
    "BertBackbone": "BertTextClassifierPreprocessor",
    "RobertaBackbone": "RobertaTextClassifierPreprocessor",
    "DistilBertBackbone": "DistilBertTextClassifierPreprocessor",
    "DebertaV3Backbone": "DebertaV3TextClassifierPreprocessor",
}


def create_text_preprocessor(
    name: str, weights: str | os.PathLike | None = "default", sequence_length: int = 128
):
    """Returns the tokenizer + packer for a text backbone's vocabulary.

    Built explicitly with `sequence_length`: `XTextClassifier.from_preset(dir,
    sequence_length=...)` ignores it for sentence-transformers directories
    (the length stays at `sentence_bert_config.json`'s value).

    Args:
        name: a text backbone's registry name.
        weights: where the vocabulary comes from, as in `create_backbone`.
        sequence_length: tokens per example after packing.

    Returns:
        A KerasHub `TextClassifierPreprocessor`: strings in, `token_ids` and
        `padding_mask` (and `segment_ids` for BERT) out.

    Example:
        >>> pre = create_text_preprocessor("all-minilm-l6-v2", sequence_length=32)
        >>> pre(["This is an example sentence"])["token_ids"].shape
        TensorShape([1, 32])
    """
    import keras_hub

    spec = get_spec(name)
    if spec.modality != TEXT:
        raise ValueError(f"{name!r} is not a text backbone. Received: name={name!r}.")
    if (
        isinstance(sequence_length, bool)
        or not isinstance(sequence_length, int)
        or sequence_length < 2
    ):
        raise ValueError(
            "`sequence_length` must be an integer >= 2. "
            f"Received: sequence_length={sequence_length!r}."
        )
    if weights == "default":
        weights = spec.default_weights
    if weights is None:
        raise ValueError(
            "A text preprocessor needs a vocabulary: pass a preset handle, a local "
            f"directory or an offline asset. Received: weights=None for {name!r}."
        )
    cls = getattr(keras_hub.models, _TEXT_PREPROCESSORS[spec.builder.class_name])
    location = assets.asset_path(weights) if assets.is_asset(str(weights)) else os.fspath(weights)
    if os.path.isdir(location):
        with hf_offline(True):
            return cls.from_preset(location, sequence_length=sequence_length)
    return load_from_hub(
        lambda: cls.from_preset(location, sequence_length=sequence_length),
        what=f"the tokenizer of preset {location!r}",
        host=preset_host(location),
        local_hint="Pass a local preset or Hugging Face directory as `weights`.",
    )


def tokenize(preprocessor, texts) -> dict:
    """Tokenizes strings as training does: in TensorFlow's graph (TF-Text).

    A KerasHub preprocessor called eagerly runs its pure-Python path
    (`regex`, `unicodedata`), while a `tf.data` pipeline, and so training, runs
    TF-Text's kernels, and the two disagree on some strings: a NUL character
    ends the string for TF-Text only, and punctuation added in recent Unicode
    versions splits words for one of them only. Predictions and export checks
    must see the tokens the model trained on, so they tokenize here.

    Args:
        preprocessor: a KerasHub text preprocessor.
        texts: a `[batch]` string tensor, or a list of strings.

    Returns:
        The preprocessor's outputs (`token_ids`, `padding_mask`, ...) as tensors.

    Example:
        >>> tokenize(model.preprocessor, ["a gripping film"])["token_ids"].shape
        TensorShape([1, 128])
    """
    import tensorflow as tf

    length = getattr(preprocessor, "sequence_length", None)  # read when traced: a change retraces
    traced, function = _graph_calls.get(preprocessor, (None, None))
    if function is None or traced != length:
        function = tf.function(
            preprocessor, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False
        )
        _graph_calls[preprocessor] = (length, function)
    return function(tf.convert_to_tensor(texts, tf.string))


_graph_calls: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
