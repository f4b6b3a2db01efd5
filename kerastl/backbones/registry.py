"""The registry of backbone specs: register, look up, list.

The built-in specs are registered by the modules that define them
(`applications`, `hub`), which `kerastl/backbones/__init__.py` imports
explicitly; the registry itself imports none of its users.
"""

from __future__ import annotations

import difflib
import fnmatch

from kerastl.backbones.spec import BackboneSpec

_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Adds `spec` to the registry.

    Args:
        spec: the backbone spec; its name must be new.

    Returns:
        The spec.

    Example:
        >>> register(BackboneSpec(name="my_net", source="applications", ...))
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"A backbone named {spec.name!r} is already registered.")
    _REGISTRY[spec.name] = spec
    return spec


def find_spec(name: str) -> BackboneSpec | None:
    """Returns the spec registered under `name`, or None."""
    return _REGISTRY.get(name.lower())


def find_spec_by_class(class_name: str) -> BackboneSpec | None:
    """Returns the first KerasHub spec built by the class `class_name`, or None.

    A KerasHub backbone loaded from a preset carries the preset's name
    (`"bert_backbone"`), not a registry name; its family's rules still apply.
    """
    for spec in _REGISTRY.values():
        if getattr(spec.builder, "class_name", None) == class_name:
            return spec
    return None


def get_spec(name: str) -> BackboneSpec:
    """Returns the spec registered under `name`.

    Args:
        name: a registry name, case-insensitive.

    Returns:
        The `BackboneSpec`.

    Raises:
        ValueError: unknown name; the message lists the closest names.

    Example:
        >>> get_spec("resnet50").input_size
        (224, 224)
    """
    if not isinstance(name, str):
        raise TypeError(f"A backbone name must be a string. Received: name={name!r}.")
    spec = find_spec(name)
    if spec is None:
        close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=5)
        raise ValueError(
            f"Unknown backbone {name!r}. Closest registered names: {close}; "
            f"`kerastl.list_backbones()` lists all {len(_REGISTRY)}. Received: name={name!r}."
        )
    return spec


def list_backbones(pattern: str = "*", source: str | None = None) -> list[str]:
    """Returns the registered backbone names matching a shell-style pattern.

    Args:
        pattern: e.g. `"efficientnet*"`; case-insensitive.
        source: keep only `"applications"` or `"keras_hub"` specs.

    Returns:
        Sorted names.

    Example:
        >>> kerastl.list_backbones("resnet5*")
        ['resnet50', 'resnet50v2']
    """
    names = [
        name
        for name, spec in _REGISTRY.items()
        if fnmatch.fnmatch(name, pattern.lower()) and (source is None or spec.source == source)
    ]
    return sorted(names)
