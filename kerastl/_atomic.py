"""Publishing files and directories atomically: write aside, fsync, rename.

Used by backups, run directories, converted weights and exports, all through
`publishing`:
a reader never sees a half-written file or directory, and an interrupted
write leaves only a hidden temporary sibling (`.tmp-...`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import uuid
from collections.abc import Callable, Iterator

TEMP_PREFIX = ".tmp-"


def temporary_sibling(path: str) -> str:
    """A hidden, unique path next to `path` (same filesystem, so rename is atomic)."""
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f"{TEMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def check_destination(path: str, overwrite: bool) -> None:
    """Refuses an existing, non-empty destination unless `overwrite`."""
    occupied = os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path))
    if occupied and not overwrite:
        raise FileExistsError(
            f"{path!r} exists. Pass overwrite=True to replace it, or choose another path."
        )


def fsync_tree(path: str) -> None:
    """Flushes every file and directory under `path` (or the file) to disk."""
    if os.path.isfile(path):
        _fsync(path)
        return
    for root, _, files in os.walk(path):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def publish(temporary: str, path: str, overwrite: bool = False) -> None:
    """Renames a finished `temporary` to `path`.

    A file replaces an existing one in a single rename, so `path` never goes
    missing; a directory cannot, so a replaced one is renamed aside first
    and removed after.
    """
    fsync_tree(temporary)
    old = None
    replaces_file = overwrite and os.path.isfile(temporary) and os.path.isfile(path)
    if os.path.exists(path) and not replaces_file:
        check_destination(path, overwrite)
        old = temporary_sibling(path) + "-old"
        os.rename(path, old)
    os.rename(temporary, path)
    _fsync(os.path.dirname(os.path.abspath(path)))
    if old is not None:
        remove(old)


def remove(path: str) -> None:
    """Deletes a file or directory tree, if it exists."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def publishing(
    path: str | os.PathLike, *, overwrite: bool = False, suffix: str = ""
) -> Iterator[str]:
    """Yields a temporary sibling of `path` to write; publishes it when the block ends.

    The one publish-by-rename sequence of the package: everything is written
    aside, fsynced and renamed onto `path` only if the block finishes; on an
    error (or a kill) `path` is untouched and the temporary is removed.

    Args:
        path: the file or directory to publish.
        overwrite: replace an existing `path` (else an occupied one raises
            `FileExistsError`, checked before the block runs).
        suffix: appended to the temporary name (`.onnx`, `.weights.h5`),
            for writers that require one.

    Yields:
        The temporary path to write.

    Example:
        >>> with publishing("out/model.onnx", suffix=".onnx") as temporary:
        ...     write_model(temporary)
    """
    path = os.fspath(path)
    check_destination(path, overwrite)
    temporary = temporary_sibling(path) + suffix
    try:
        yield temporary
        publish(temporary, path, overwrite)
    finally:
        remove(temporary)


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Writes through `write(temporary_path)`, then publishes it onto `path`.

    The temporary path keeps `path`'s suffixes (`.weights.h5`), which some
    writers require.
    """
    suffix = "".join(pathlib.Path(os.fspath(path)).suffixes)
    with publishing(path, overwrite=True, suffix=suffix) as temporary:
        write(temporary)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes a text file atomically."""
    write_atomically(path, lambda temporary: pathlib.Path(temporary).write_text(text))


def _fsync(path: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
