"""The backbone registry: specs, listing, creation."""

from kerastl.backbones.factory import create_backbone
from kerastl.backbones.hub_access import HubUnavailableError
from kerastl.backbones.registry import get_spec, list_backbones, register
from kerastl.backbones.spec import BackboneSpec

__all__ = [
    "BackboneSpec",
    "HubUnavailableError",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "register",
]
