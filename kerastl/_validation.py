"""Argument checks shared by the public functions."""

from __future__ import annotations


def check_positive_int(name: str, value: object) -> None:
    """Raises `ValueError` unless `value` is an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}.")
