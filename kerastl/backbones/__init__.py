"""The backbone registry: specs, listing, creation."""

# The built-in specs register themselves when their modules are imported,
# here, explicitly (as timm's `models/__init__.py` does); efficientnet_lite
# registers the saved-model name of the Lite0 backbone class.
from kerastl.backbones import applications, efficientnet_lite, hub  # noqa: F401
from kerastl.backbones.factory import create_backbone
from kerastl.backbones.hub_access import HubUnavailableError
from kerastl.backbones.registry import get_spec, list_backbones, register
from kerastl.backbones.spec import BackboneSpec
from kerastl.backbones.torch_checkpoint import CheckpointError, read_state_dict

__all__ = [
    "BackboneSpec",
    "CheckpointError",
    "HubUnavailableError",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "read_state_dict",
    "register",
]
