"""The core-op WordPiece tokenizer gives the training tokenizer's ids, string for string."""

import keras_hub
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as tf_text
from adversarial_text import HAND_WRITTEN, adversarial_strings

import kerastl
from kerastl.backbones.tokenizers import tokenize
from kerastl.export import unicode_tables
from kerastl.export.core_tokenizer import CoreWordPiece, unsupported_reason
from kerastl.export.serving_ops import core_op_names, graph_ops


@pytest.fixture(scope="module")
def minilm_preprocessor():
    return kerastl.create_text_preprocessor("all-minilm-l6-v2", sequence_length=128)


def _traced(tokenizer):
    return tf.function(
        tokenizer, input_signature=[tf.TensorSpec([None], tf.string)], autograph=False
    )


def _differing(preprocessor, texts, batch=500):
    """The strings whose core-op ids differ from the training tokenizer's.

    The core tokenizer pads to the batch's longest sequence, the reference to
    `sequence_length`: equal ids up to that length, then only padding.
    """
    core = _traced(CoreWordPiece(preprocessor))
    pad = preprocessor.tokenizer.pad_token_id
    differing = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        expected = tokenize(preprocessor, chunk)
        actual = core(tf.constant(chunk))
        ids, reference = actual["token_ids"].numpy(), expected["token_ids"].numpy()
        length = ids.shape[1]
        assert length <= preprocessor.sequence_length
        same = (ids == reference[:, :length]).all(axis=1) & (reference[:, length:] == pad).all(
            axis=1
        )
        np.testing.assert_array_equal(actual["padding_mask"], ids != pad)
        np.testing.assert_array_equal(actual["segment_ids"], np.zeros_like(ids))
        differing += [chunk[i] for i in np.flatnonzero(~same)]
    return differing


@pytest.mark.slow
def test_token_ids_equal_the_training_tokenizers_on_every_review_and_adversarial_string(
    minilm_preprocessor, tfds_dir
):
    reviews = [
        text.decode("utf-8")
        for split in ("train", "test")
        for text, _ in kerastl.data.load_tfds(
            "rotten_tomatoes", split, data_dir=tfds_dir
        ).as_numpy_iterator()
    ]
    assert len(reviews) == 12808
    strings = adversarial_strings()
    assert _differing(minilm_preprocessor, reviews) == []
    assert _differing(minilm_preprocessor, strings) == []
    # The hand-written cases do reach the paths they are written for.
    lengths = tokenize(minilm_preprocessor, list(HAND_WRITTEN))["padding_mask"].numpy().sum(1)
    assert lengths[HAND_WRITTEN.index("word " * 400)] == 128  # truncated
    assert lengths[HAND_WRITTEN.index("")] == 2  # [CLS] [SEP]


@pytest.mark.parametrize(
    "lowercase, strip_accents, split_on_cjk, sequence_length",
    [
        (False, False, True, 64),
        (True, True, True, 64),
        (False, True, False, 64),
        (True, False, False, 8),
    ],
)
def test_each_setting_of_the_tokenizer_is_followed(
    minilm_preprocessor, lowercase, strip_accents, split_on_cjk, sequence_length
):
    tokenizer = keras_hub.models.BertTokenizer(
        vocabulary=minilm_preprocessor.tokenizer.vocabulary,
        lowercase=lowercase,
        strip_accents=strip_accents,
        split_on_cjk=split_on_cjk,
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length
    )
    preprocessor(tf.constant([""]))
    assert _differing(preprocessor, adversarial_strings(1500, seed=1)) == []


def test_composition_gives_icus_nfc_of_every_decomposable_code_point(minilm_preprocessor):
    """The UAX #15 composition (run where per-code-point case folding is not
    exact) rebuilds each of the ~13k code points ICU decomposes, from its NFD."""
    decomposable = unicode_tables.decomposition_map().keys
    assert len(decomposable) > 13000
    text = tf.strings.unicode_encode(decomposable[:, None], "UTF-8")
    expected = tf.strings.unicode_decode(tf_text.normalize_utf8(text, "NFC"), "UTF-8")
    tokenizer = CoreWordPiece(minilm_preprocessor)
    decomposed = tf.strings.unicode_decode(tf_text.normalize_utf8(text, "NFD"), "UTF-8")
    assert tokenizer._composed(tokenizer._reorder(decomposed)).to_list() == expected.to_list()


def test_its_graph_holds_core_ops_only_and_refuses_invalid_utf8(minilm_preprocessor):
    traced = _traced(CoreWordPiece(minilm_preprocessor)).get_concrete_function()
    ops = graph_ops(traced.graph.as_graph_def())
    assert {"StringSplitV2", "LookupTableFindV2", "UnicodeDecode"} <= ops
    assert ops <= core_op_names()
    reference = _traced(minilm_preprocessor).get_concrete_function()
    assert "FastWordpieceTokenizeWithOffsets" in graph_ops(reference.graph.as_graph_def())
    with pytest.raises(tf.errors.InvalidArgumentError, match="Invalid formatting"):
        traced(tf.constant([b"caf\xc3", b"fine"]))


def test_tokenizers_that_are_not_wordpiece_are_named_as_unsupported(minilm_preprocessor):
    assert unsupported_reason(minilm_preprocessor) is None
    special = keras_hub.models.BertTokenizer(
        vocabulary=minilm_preprocessor.tokenizer.vocabulary, special_tokens_in_strings=True
    )
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(special, sequence_length=8)
    assert "special tokens" in unsupported_reason(preprocessor)
    vocabulary = {"<s>": 0, "<pad>": 1, "</s>": 2, "<mask>": 3, "a": 4, "Ġ": 5, "Ġa": 6}
    bpe = keras_hub.models.RobertaTokenizer(vocabulary=vocabulary, merges=["Ġ a"])
    roberta = keras_hub.models.RobertaTextClassifierPreprocessor(bpe, sequence_length=8)
    assert "RobertaTokenizer, not a WordPieceTokenizer" in unsupported_reason(roberta)
    with pytest.raises(ValueError, match=r"cannot run in core TensorFlow ops.*RobertaTokenizer"):
        CoreWordPiece(roberta)


def test_eager_strings_are_tokenized_as_training_tokenizes_them(minilm_preprocessor):
    """KerasHub's eager (pure-Python) path and its graph (TF-Text) path
    disagree after a NUL; predictions tokenize as training: in the graph."""
    texts = ["before\x00after", "fine"]
    in_training = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(minilm_preprocessor)
    expected = next(iter(in_training))["token_ids"].numpy()
    eager = minilm_preprocessor(tf.constant(texts))["token_ids"].numpy()
    assert (eager[0] != expected[0]).any()  # KerasHub's own two paths differ here
    np.testing.assert_array_equal(tokenize(minilm_preprocessor, texts)["token_ids"], expected)
    shorter = kerastl.create_text_preprocessor("all-minilm-l6-v2", sequence_length=16)
    assert tokenize(shorter, texts)["token_ids"].shape == (2, 16)
    shorter.sequence_length = 8  # read when traced: the graph call follows the change
    assert tokenize(shorter, texts)["token_ids"].shape == (2, 8)
    backbone = kerastl.create_backbone(
        "bert_base_en_uncased", weights=None, num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, vocabulary_size=30522,
    )  # fmt: skip
    model = kerastl.TransferModel(backbone, num_classes=2, preprocessor=minilm_preprocessor)
    np.testing.assert_array_equal(model.prepare_data(texts)["token_ids"], expected)
