"""`create_backbone`: build a registered backbone with the weights asked for."""

from __future__ import annotations

import os
from typing import Any

import keras

from kerastl.backbones import assets
from kerastl.backbones.hub import create_hub_backbone
from kerastl.backbones.hub_access import load_from_hub
from kerastl.backbones.registry import get_spec
from kerastl.backbones.spec import APPLICATIONS, IMAGE, BackboneSpec

DEFAULT = "default"
_WEIGHT_FILE_SUFFIXES = (".weights.h5", ".h5", ".keras")


def create_backbone(
    name: str,
    weights: str | os.PathLike | None = DEFAULT,
    input_shape: tuple[int | None, ...] | None = None,
    include_top: bool = False,
    **kwargs: Any,
) -> keras.Model:
    """Builds a registered backbone.

    Args:
        name: a registry name (`kerastl.list_backbones()`).
        weights: `"default"` (the spec's: ImageNet, a KerasHub preset or a
            registered offline asset), `None` (random initialisation),
            `"imagenet"`, a KerasHub preset handle (`"bert_base_en"`,
            `"hf://..."`), a registered offline asset name, a local Keras
            weights file (`.weights.h5`/`.h5`), or a local KerasHub preset /
            Hugging Face / timm checkpoint directory.
        input_shape: image input shape; default `(*spec.input_size, 3)`.
            Use `(None, None, 3)` for any size where the family allows it.
        include_top: keep the pretrained classifier (1000 ImageNet logits or
            probabilities, as the source model defines it).
        **kwargs: passed to the Keras Applications function, or for KerasHub
            backbones, overrides of the architecture config (e.g.
            `num_layers=2` for a tiny test model with `weights=None`).

    Returns:
        A functional Keras model named `name`, so `layer_groups` finds its rules.

    Raises:
        HubUnavailableError: the weights must come from a hub and none is reachable.
        ValueError: an unknown name or weights value, or an input too small.

    Example:
        >>> bb = kerastl.create_backbone("resnet50", weights=None, input_shape=(64, 64, 3))
        >>> bb.output_shape
        (None, 2, 2, 2048)
    """
    spec = get_spec(name)
    if weights == DEFAULT:
        weights = spec.default_weights
    if spec.modality == IMAGE:
        input_shape = _check_input_shape(spec, input_shape)
    if weights is not None and assets.is_asset(str(weights)):
        return assets.load_asset(str(weights), spec, include_top=include_top, **kwargs)
    if spec.source == APPLICATIONS:
        return _create_application(spec, weights, input_shape, include_top, **kwargs)
    return create_hub_backbone(spec, weights, input_shape, include_top, **kwargs)


def _check_input_shape(spec: BackboneSpec, input_shape):
    if input_shape is None:
        return (*spec.input_size, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] not in (None, 1, 3):
        raise ValueError(
            f"`input_shape` must be (height, width, channels) with 3 channels for "
            f"{spec.name!r}. Received: input_shape={input_shape}."
        )
    too_small = [
        side for side in input_shape[:2] if side is not None and side < spec.min_input_size
    ]
    if too_small:
        raise ValueError(
            f"{spec.name!r} needs inputs of at least {spec.min_input_size}x{spec.min_input_size}. "
            f"Received: input_shape={input_shape}."
        )
    return input_shape


def _create_application(spec, weights, input_shape, include_top, **kwargs):
    # Some builders read `name` to pick their architecture (EfficientNetV2),
    # so the registry name is given after building.
    def builder(weights):
        model = spec.builder(
            weights=weights, include_top=include_top, input_shape=input_shape, **kwargs
        )
        model.name = spec.name
        return model

    if weights is None:
        return builder(None)
    if weights == "imagenet":
        return load_from_hub(
            lambda: builder("imagenet"),
            what=f"{spec.name} ImageNet weights",
            host="storage.googleapis.com",
            local_hint=(
                f"Download them where a network exists and pass the file: "
                f"create_backbone({spec.name!r}, weights='/path/to/file.h5'), or copy the "
                "file into ~/.keras/models/."
            ),
        )
    path = os.fspath(weights)
    if not path.endswith(_WEIGHT_FILE_SUFFIXES):
        raise ValueError(
            f"`weights` for {spec.name!r} must be 'default', 'imagenet', None, a registered "
            f"asset ({assets.asset_names()}) or a Keras weights file ending in "
            f"{_WEIGHT_FILE_SUFFIXES}. Received: weights={weights!r}."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found. Received: weights={path!r}.")
    model = builder(None)
    try:
        model.load_weights(path)
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"The weights in {path!r} do not fit {spec.name!r} "
            f"(include_top={include_top}, input_shape={input_shape}): {error}"
        ) from error
    return model
