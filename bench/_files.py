"""Sizes of the files the benchmarks write."""

from __future__ import annotations

import os


def size_mb(path: str) -> float:
    """A file's size, or the total of a directory's files, in megabytes (1e6 bytes).

    Example:
        >>> size_mb("runs/elpv-lite0/saved_model")
        15.3
    """
    if os.path.isfile(path):
        return os.path.getsize(path) / 1e6
    total = sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )
    return total / 1e6
