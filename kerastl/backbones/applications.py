"""Specs for every Keras Applications model, with their group rules.

Boundaries name the layers where blocks end (`conv2_block3_out`, `mixed4`);
blocks built from auto-named layers are cut with `until` (see `groups.py`).
"""

from __future__ import annotations

import keras

from kerastl.backbones.registry import register
from kerastl.backbones.rules import GroupRules, rest, through, until
from kerastl.backbones.spec import APPLICATIONS, BackboneSpec
from kerastl.preprocessing import Preprocessing

_TOP = through("predictions", "top", optional=True)


def _stages(*block_ranges: tuple[int, int]) -> tuple[tuple[str, str], ...]:
    """Stage `i + 1` merges fine groups `block_{first}` to `block_{last}`."""
    return tuple(
        ("|".join(f"block_{b}" for b in range(first, last + 1)), f"stage{i + 1}")
        for i, (first, last) in enumerate(block_ranges)
    )


# The stem ends at `pool1_pool`: the first block's output (`conv2_block1_out`)
# is dominated by its own `add` (V1) or `preact_relu` (V2), not by the stem.
RESNET = GroupRules(
    boundaries=(through("pool1_pool", "stem"), through(r"(conv\d_block\d+)_out"), _TOP),
    stages=((r"(conv\d)_block\d+", r"\1"),),
)
RESNET_V2 = GroupRules(
    boundaries=(
        through("pool1_pool", "stem"),
        through(r"(conv\d_block\d+)_out"),
        through("post_relu", "post"),
        _TOP,
    ),
    stages=((r"(conv\d)_block\d+", r"\1"), ("post", "conv5")),
)
VGG = GroupRules(boundaries=(through(r"(block\d)_pool"), _TOP))
INCEPTION_V3 = GroupRules(
    boundaries=(until("mixed0", "stem"), through(r"(mixed\d+)"), _TOP),
    stages=(
        (r"mixed[0-2]", "inception_a"),
        ("mixed3", "reduction_a"),
        (r"mixed[4-7]", "inception_b"),
        ("mixed8", "reduction_b"),
        (r"mixed(9|10)", "inception_c"),
    ),
)
INCEPTION_RESNET_V2 = GroupRules(
    boundaries=(
        until("mixed_5b", "stem"),
        through("mixed_5b", "mixed_5b"),
        through(r"(block35_\d+)_ac"),
        through("mixed_6a", "mixed_6a"),
        through(r"(block17_\d+)_ac"),
        through("mixed_7a", "mixed_7a"),
        through(r"(block8_\d+)_ac"),
        until("conv_7b", "block8_10"),
        through("conv_7b_ac", "conv_7b"),
        _TOP,
    ),
    stages=((r"(block35|block17|block8)_\d+", r"\1"),),
)
XCEPTION = GroupRules(
    boundaries=(
        through("block1_conv2_act", "block1"),
        *(until(f"block{i + 1}_sepconv1_act", f"block{i}") for i in range(2, 13)),
        until("block14_sepconv1", "block13"),
        through("block14_sepconv2_act", "block14"),
        _TOP,
    ),
    stages=(
        ("block1", "stem"),
        (r"block[2-4]", "entry_flow"),
        (r"block([5-9]|1[0-2])", "middle_flow"),
        (r"block1[34]", "exit_flow"),
    ),
)
MOBILENET = GroupRules(
    boundaries=(through("conv1_relu", "stem"), through(r"conv_pw_(\d+)_relu", r"block_\1"), _TOP),
    stages=_stages((1, 1), (2, 3), (4, 5), (6, 11), (12, 13)),
)
MOBILENET_V2 = GroupRules(
    boundaries=(
        through("Conv1_relu", "stem"),
        through("expanded_conv_project_BN", "block_0"),
        through(r"(block_\d+)_(?:project_BN|add)"),
        through("out_relu", "head_conv"),
        _TOP,
    ),
    stages=_stages((0, 0), (1, 2), (3, 5), (6, 12), (13, 16)),
)
_MOBILENET_V3_BLOCKS = (
    until(r"expanded_conv_depthwise(_pad)?", "stem"),
    through(r"expanded_conv_(?:project_bn|add)", "block_0"),
    through(r"expanded_conv_(\d+)_(?:project_bn|add)", r"block_\1"),
    through("conv_1_bn", "head_conv"),
    _TOP,
)


MOBILENET_V3_SMALL = GroupRules(
    _MOBILENET_V3_BLOCKS, stages=_stages((0, 0), (1, 2), (3, 5), (6, 7), (8, 10))
)
MOBILENET_V3_LARGE = GroupRules(
    _MOBILENET_V3_BLOCKS, stages=_stages((0, 0), (1, 2), (3, 5), (6, 9), (10, 11), (12, 14))
)
DENSENET = GroupRules(
    boundaries=(
        through("pool1", "stem"),
        through(r"(conv\d_block\d+)_concat"),
        through(r"(pool\d)_pool"),
        through("relu", "post"),
        _TOP,
    ),
    stages=((r"(conv\d)_block\d+", r"\1"),),
)
_NASNET_CELLS = (
    through("stem_bn1", "stem"),
    through(r"reduction_concat_(stem_\d)"),
    through(r"normal_concat_(\d+)", r"cell_\1"),
    through(r"reduction_concat_(reduce_\d+)"),
    _TOP,
)


def _nasnet(cells_per_stage: int) -> GroupRules:
    n = cells_per_stage
    return GroupRules(
        _NASNET_CELLS,
        stages=(
            (r"stem(_\d)?", "stem"),
            ("|".join(f"cell_{i}" for i in range(0, n)), "stage1"),
            ("|".join([f"reduce_{n}"] + [f"cell_{i}" for i in range(n + 1, 2 * n + 1)]), "stage2"),
            (
                "|".join([f"reduce_{2 * n}"] + [f"cell_{i}" for i in range(2 * n + 1, 3 * n + 1)]),
                "stage3",
            ),
        ),
    )


NASNET_MOBILE = _nasnet(4)
NASNET_LARGE = _nasnet(6)
EFFICIENTNET = GroupRules(
    boundaries=(
        through("stem_activation", "stem"),
        through(r"(block\d+[a-z])_(?:project_bn|project_activation|add)"),
        through("top_activation", "top_conv"),
        _TOP,
    ),
    stages=((r"(block\d+)[a-z]", r"\1"),),
)
CONVNEXT = GroupRules(
    boundaries=(
        through(r".*_stem", "stem"),
        through(r".*_(stage_\d+_block_\d+)_identity"),
        through(r".*_(downsampling_block_\d+)"),
        through(r".*_head_dense", "top", optional=True),
        rest("post_norm"),
    ),
    stages=(
        (r"(stage_\d+)_block_\d+", r"\1"),
        ("downsampling_block_0", "stage_1"),
        ("downsampling_block_1", "stage_2"),
        ("downsampling_block_2", "stage_3"),
    ),
)


def _add(name, builder, groups, size, mode, min_size=32, description=""):
    register(
        BackboneSpec(
            name=name,
            source=APPLICATIONS,
            builder=builder,
            groups=groups,
            input_size=(size, size),
            min_input_size=min_size,
            preprocessing=Preprocessing.from_mode(mode),
            default_weights="imagenet",
            description=description or f"keras.applications.{builder.__name__} (ImageNet)",
        )
    )


A = keras.applications
_add("vgg16", A.VGG16, VGG, 224, "caffe")
_add("vgg19", A.VGG19, VGG, 224, "caffe")
_add("resnet50", A.ResNet50, RESNET, 224, "caffe")
_add("resnet101", A.ResNet101, RESNET, 224, "caffe")
_add("resnet152", A.ResNet152, RESNET, 224, "caffe")
_add("resnet50v2", A.ResNet50V2, RESNET_V2, 224, "tf")
_add("resnet101v2", A.ResNet101V2, RESNET_V2, 224, "tf")
_add("resnet152v2", A.ResNet152V2, RESNET_V2, 224, "tf")
_add("inceptionv3", A.InceptionV3, INCEPTION_V3, 299, "tf", min_size=75)
_add("inceptionresnetv2", A.InceptionResNetV2, INCEPTION_RESNET_V2, 299, "tf", min_size=75)
_add("xception", A.Xception, XCEPTION, 299, "tf", min_size=71)
_add("mobilenet", A.MobileNet, MOBILENET, 224, "tf")
_add("mobilenetv2", A.MobileNetV2, MOBILENET_V2, 224, "tf")
_add("mobilenetv3small", A.MobileNetV3Small, MOBILENET_V3_SMALL, 224, "included")
_add("mobilenetv3large", A.MobileNetV3Large, MOBILENET_V3_LARGE, 224, "included")
_add("densenet121", A.DenseNet121, DENSENET, 224, "torch")
_add("densenet169", A.DenseNet169, DENSENET, 224, "torch")
_add("densenet201", A.DenseNet201, DENSENET, 224, "torch")
_add("nasnetmobile", A.NASNetMobile, NASNET_MOBILE, 224, "tf")
_add("nasnetlarge", A.NASNetLarge, NASNET_LARGE, 331, "tf")
for _suffix, _size in zip("01234567", (224, 240, 260, 300, 380, 456, 528, 600), strict=True):
    _add(
        f"efficientnetb{_suffix}",
        getattr(A, f"EfficientNetB{_suffix}"),
        EFFICIENTNET,
        _size,
        "included",
    )
for _suffix, _size in (
    ("B0", 224),
    ("B1", 240),
    ("B2", 260),
    ("B3", 300),
    ("S", 384),
    ("M", 480),
    ("L", 480),
):
    _add(
        f"efficientnetv2{_suffix.lower()}",
        getattr(A, f"EfficientNetV2{_suffix}"),
        EFFICIENTNET,
        _size,
        "included",
    )
for _size_name in ("Tiny", "Small", "Base", "Large", "XLarge"):
    _add(
        f"convnext{_size_name.lower()}",
        getattr(A, f"ConvNeXt{_size_name}"),
        CONVNEXT,
        224,
        "included",
    )
