"""`BackboneSpec`: everything kerastl needs to know about one pretrained model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from kerastl.backbones.rules import GroupRules
from kerastl.preprocessing import Preprocessing

APPLICATIONS = "applications"
KERAS_HUB = "keras_hub"
IMAGE = "image"
TEXT = "text"


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    Args:
        name: registry name (lower case), also the built model's name.
        source: `"applications"` (Keras Applications) or `"keras_hub"`.
        builder: for Applications, the `keras.applications` function; for
            KerasHub, the backbone class.
        groups: the family's group rules.
        modality: `"image"` or `"text"`.
        input_size: default `(height, width)` for images.
        min_input_size: the smallest side the architecture accepts.
        preprocessing: what the model does to raw pixels before the backbone.
        default_weights: what `weights="default"` loads: `"imagenet"`, a
            KerasHub preset handle, or a registered offline asset name.
        hub_config: for KerasHub, the architecture (constructor arguments)
            used when no weights are loaded.
        description: one line for `list_backbones` and `describe`.
    """

    name: str
    source: str
    builder: Callable[..., Any]
    groups: GroupRules
    modality: str = IMAGE
    input_size: tuple[int, int] = (224, 224)
    min_input_size: int = 32
    preprocessing: Preprocessing = dataclasses.field(default_factory=Preprocessing)
    default_weights: str | None = "imagenet"
    hub_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""

    def __post_init__(self):
        if self.source not in (APPLICATIONS, KERAS_HUB):
            raise ValueError(
                f"`source` must be 'applications' or 'keras_hub'. Received: source={self.source!r}."
            )
        if self.modality not in (IMAGE, TEXT):
            raise ValueError(
                f"`modality` must be 'image' or 'text'. Received: modality={self.modality!r}."
            )
