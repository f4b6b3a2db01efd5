"""kerastl: transfer learning for Keras 3 / TensorFlow.

Example:
    >>> import kerastl
    >>> model = kerastl.TransferModel("efficientnet-lite0", num_classes=5)
    >>> kerastl.freeze(model)
    >>> print(kerastl.describe(model))
"""

from kerastl.backbones import (
    BackboneSpec,
    CheckpointError,
    HubUnavailableError,
    create_backbone,
    get_spec,
    list_backbones,
    read_state_dict,
)
from kerastl.backbones.hub import create_text_preprocessor
from kerastl.describe import describe
from kerastl.freezing import freeze, freeze_to, set_trainable_groups, trainable_groups, unfreeze
from kerastl.groups import GroupRules, layer_groups
from kerastl.models import TransferModel
from kerastl.preprocessing import Preprocessing, load_image

__version__ = "0.1.0"

__all__ = [
    "BackboneSpec",
    "CheckpointError",
    "GroupRules",
    "HubUnavailableError",
    "Preprocessing",
    "TransferModel",
    "create_backbone",
    "create_text_preprocessor",
    "describe",
    "freeze",
    "freeze_to",
    "get_spec",
    "layer_groups",
    "list_backbones",
    "load_image",
    "read_state_dict",
    "set_trainable_groups",
    "trainable_groups",
    "unfreeze",
]
