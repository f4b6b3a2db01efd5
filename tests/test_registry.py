"""Every registered backbone: builds, groups cover it, freezing is exact."""

import keras
import numpy as np
import pytest
from checks import run_freeze_test, run_group_test, tiny_backbone

import kerastl

# Builds of these take the most time and memory (tens to hundreds of millions
# of parameters even at 32x32); they still run in CI.
LARGE = {
    "convnextbase",
    "convnextlarge",
    "convnextxlarge",
    "efficientnetv2l",
    "efficientnetv2m",
    "efficientnetb7",
    "efficientnetb6",
    "nasnetlarge",
    "resnet152",
    "resnet152v2",
    "vgg19",
    "inceptionresnetv2",
    "densenet201",
}
APPLICATIONS = [
    "vgg16",
    "vgg19",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet50v2",
    "resnet101v2",
    "resnet152v2",
    "inceptionv3",
    "inceptionresnetv2",
    "xception",
    "mobilenet",
    "mobilenetv2",
    "mobilenetv3small",
    "mobilenetv3large",
    "densenet121",
    "densenet169",
    "densenet201",
    "nasnetmobile",
    "nasnetlarge",
    *(f"efficientnetb{i}" for i in range(8)),
    *(f"efficientnetv2{s}" for s in ("b0", "b1", "b2", "b3", "s", "m", "l")),
    *(f"convnext{s}" for s in ("tiny", "small", "base", "large", "xlarge")),
]


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in names]


def test_registry_holds_every_keras_application():
    assert set(APPLICATIONS) <= set(kerastl.list_backbones(source="applications"))
    assert len(kerastl.list_backbones(source="applications")) == len(APPLICATIONS)


def test_registry_holds_the_required_keras_hub_families():
    classes = {
        kerastl.get_spec(n).builder.class_name for n in kerastl.list_backbones(source="keras_hub")
    }
    assert {
        "BertBackbone",
        "RobertaBackbone",
        "DistilBertBackbone",
        "DebertaV3Backbone",
        "ViTBackbone",
        "ResNetBackbone",
        "EfficientNetBackbone",
    } <= classes


def test_list_backbones_filters_by_pattern():
    assert kerastl.list_backbones("resnet5*") == ["resnet50", "resnet50v2"]
    assert kerastl.list_backbones("NOPE*") == []


def test_unknown_backbone_names_the_closest():
    with pytest.raises(ValueError, match=r"resnet50"):
        kerastl.get_spec("resnet05")


@pytest.mark.parametrize("name", _params(kerastl.list_backbones()))
def test_backbone_builds_groups_and_freezes(name):
    backbone = tiny_backbone(name)
    assert backbone.name == name
    run_group_test(backbone)
    spec = kerastl.get_spec(name)
    model = kerastl.TransferModel(backbone, num_classes=3, backbone_name=name)
    run_group_test(model)
    assert list(kerastl.layer_groups(model))[-1] == "head"
    run_freeze_test(model)
    if spec.modality == "image":
        side = backbone.input_shape[1]
        out = keras.ops.convert_to_numpy(model(np.zeros((2, side, side, 3), "float32")))
        assert out.shape == (2, 3) and np.all(np.isfinite(out))
    keras.backend.clear_session(free_memory=name in LARGE)  # gc.collect: 0.1-0.4 s a call


def test_input_smaller_than_the_family_allows_is_rejected():
    with pytest.raises(ValueError, match=r"at least 75x75.*input_shape=\(32, 32, 3\)"):
        kerastl.create_backbone("inceptionv3", weights=None, input_shape=(32, 32, 3))


def test_unknown_weights_value_is_rejected_with_the_options():
    with pytest.raises(ValueError, match=r"weights='bogus'"):
        kerastl.create_backbone("resnet50", weights="bogus", input_shape=(32, 32, 3))


def test_local_keras_weights_file_loads(tmp_path):
    source = kerastl.create_backbone("mobilenet", weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    loaded = kerastl.create_backbone("mobilenet", weights=path, input_shape=(32, 32, 3))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(source.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_weights_file_for_another_architecture_names_both(tmp_path):
    path = tmp_path / "mobilenet.weights.h5"
    kerastl.create_backbone("mobilenet", weights=None, input_shape=(32, 32, 3)).save_weights(path)
    with pytest.raises(ValueError, match=r"do not fit 'vgg16'"):
        kerastl.create_backbone("vgg16", weights=path, input_shape=(32, 32, 3))


def test_keras_hub_backbone_loads_from_a_local_preset_directory(tmp_path):
    from checks import TINY_TEXT

    source = kerastl.create_backbone(
        "bert_base_en_uncased", weights=None, max_sequence_length=16, **TINY_TEXT
    )
    source.save_to_preset(str(tmp_path / "preset"))
    loaded = kerastl.create_backbone("bert_base_en_uncased", weights=tmp_path / "preset")
    assert loaded.name == "bert_base_en_uncased"
    inputs = {
        "token_ids": np.array([[2, 7, 9, 3]], "int32"),
        "padding_mask": np.ones((1, 4), "int32"),
        "segment_ids": np.zeros((1, 4), "int32"),
    }
    np.testing.assert_array_equal(
        source.predict(inputs, verbose=0)["sequence_output"],
        loaded.predict(inputs, verbose=0)["sequence_output"],
    )


def test_include_top_without_a_pretrained_classifier_says_why():
    with pytest.raises(ValueError, match=r"needs pretrained weights.*weights=None"):
        kerastl.create_backbone("efficientnet-lite0", weights=None, include_top=True)
