"""kerastl: transfer learning for Keras 3."""

from kerastl.backbones import (
    BackboneSpec,
    HubUnavailableError,
    create_backbone,
    get_spec,
    list_backbones,
)
from kerastl.groups import GroupRules, layer_groups

__version__ = "0.1.0"
