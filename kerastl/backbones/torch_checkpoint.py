"""Read a PyTorch `state_dict` checkpoint (`.pth`/`.pt`) without torch and
without running pickle code.

`torch.load` unpickles, and unpickling runs whatever callables the file names.
This reader's unpickler resolves only the names a plain state dict uses
(`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, the
`torch.*Storage` dtype markers) to local stand-ins that build NumPy arrays,
and refuses every other name before anything is called. Both formats are
read: the zip archive (`archive/data.pkl` + `archive/data/<key>`, torch >= 1.6)
and the legacy stream (magic, protocol and system-info pickles, the state
dict pickle, a storage-key list, then each storage as int64 size + bytes).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_SIGNATURE = b"PK\x03\x04"
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,  # widened to float32 below
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """A checkpoint is malformed, truncated, or asks to run code."""

    def __init__(self, path: str | os.PathLike, problem: str):
        super().__init__(f"Cannot read checkpoint {os.fspath(path)!r}: {problem}")
        self.path = os.fspath(path)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Returns the tensors of a PyTorch state-dict checkpoint as NumPy arrays.

    Args:
        path: a `.pth`/`.pt` file written by `torch.save(model.state_dict())`.

    Returns:
        An ordered dict from parameter name to array (NumPy copies).

    Raises:
        CheckpointError: the file references anything but tensor rebuilding,
            is truncated or corrupt, or does not hold a dict of tensors.

    Example:
        >>> weights = read_state_dict("efficientnet-lite0.pth")
        >>> weights["_conv_stem.weight"].shape
        (32, 3, 3, 3)
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            signature = file.read(4)
    except OSError as error:
        raise CheckpointError(path, f"cannot open it ({error}).") from error
    result = _read_zip(path) if signature == _ZIP_SIGNATURE else _read_legacy(path)
    if not isinstance(result, dict) or not all(
        isinstance(key, str) and isinstance(value, _TensorRef) for key, value in result.items()
    ):
        raise CheckpointError(path, "it does not hold a state dict (a dict of name -> tensor).")
    return collections.OrderedDict((key, ref.materialize(path)) for key, ref in result.items())


@dataclasses.dataclass
class _Storage:
    dtype: type
    numel: int
    data: np.ndarray | None = None


@dataclasses.dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self, path: str) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise CheckpointError(path, "a tensor's storage is missing from the file.")
        if len(self.size) != len(self.stride) or self.offset < 0:
            raise CheckpointError(
                path, f"a tensor has an invalid layout {self.size}/{self.stride}."
            )
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=_output_dtype(data.dtype))
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if min(self.stride, default=0) < 0 or last >= data.size:
            raise CheckpointError(
                path, "a tensor reaches past the end of its storage (truncated?)."
            )
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=[s * data.itemsize for s in self.stride],
            writeable=False,
        )
        array = np.array(view)
        if data.dtype == np.uint16 and self.storage.dtype is np.uint16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


def _output_dtype(dtype):
    return np.float32 if dtype == np.uint16 else dtype


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor was rebuilt from something that is not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storage_loader=None):
        super().__init__(file)
        self._storage_loader = storage_loader

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refused to load the global {module}.{name}: only tensor rebuilding is allowed"
        )

    def persistent_load(self, pid):
        if self._storage_loader is None:
            raise pickle.UnpicklingError("unexpected persistent id outside the state dict")
        return self._storage_loader(pid)


def _storage_from_pid(pid, storages: dict[str, _Storage]) -> _Storage:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    storage_type, key, _location, numel = pid[1:5]
    if len(pid) > 5 and pid[5] is not None:
        raise pickle.UnpicklingError("legacy storage views are not supported")
    if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
        raise pickle.UnpicklingError(f"malformed storage reference {pid!r:.80}")
    key = str(key)
    if key not in storages:
        storages[key] = _Storage(storage_type.dtype, numel)
    return storages[key]


def _unpickle(path, file, storage_loader=None):
    try:
        return _RestrictedUnpickler(file, storage_loader).load()
    except pickle.UnpicklingError as error:
        raise CheckpointError(path, f"{error}.") from error
    except (EOFError, struct.error) as error:
        raise CheckpointError(path, "the file ends early (truncated).") from error
    except Exception as error:  # malformed opcodes raise many types
        raise CheckpointError(
            path, f"malformed pickle data ({type(error).__name__}: {error})."
        ) from error


def _read_zip(path):
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise CheckpointError(path, "the zip archive is truncated or corrupt.") from error
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(path, f"expected one data.pkl in the archive, found {pickles}.")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        try:
            payload = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError) as error:
            raise CheckpointError(path, f"the archive is corrupt ({error}).") from error
        result = _unpickle(path, io.BytesIO(payload), lambda pid: _storage_from_pid(pid, storages))
        for key, storage in storages.items():
            try:
                raw = archive.read(f"{prefix}data/{key}")
            except KeyError as error:
                raise CheckpointError(
                    path, f"storage {key!r} is missing from the archive."
                ) from error
            except (zipfile.BadZipFile, OSError) as error:
                raise CheckpointError(path, f"the archive is corrupt ({error}).") from error
            storage.data = _storage_array(path, raw, storage, key)
    return result


def _read_legacy(path):
    with open(path, "rb") as file:
        magic = _unpickle(path, file)
        if magic != _LEGACY_MAGIC:
            raise CheckpointError(path, "it is neither a zip nor a legacy PyTorch checkpoint.")
        protocol = _unpickle(path, file)
        if protocol != 1001:
            raise CheckpointError(path, f"unsupported legacy protocol version {protocol!r}.")
        sys_info = _unpickle(path, file)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise CheckpointError(path, "only little-endian legacy checkpoints are supported.")
        storages: dict[str, _Storage] = {}
        result = _unpickle(path, file, lambda pid: _storage_from_pid(pid, storages))
        keys = _unpickle(path, file)
        if not isinstance(keys, list):
            raise CheckpointError(path, "the storage key list is malformed.")
        for key in keys:
            key = str(key)
            if key not in storages:
                raise CheckpointError(path, f"storage {key!r} is not referenced by any tensor.")
            header = file.read(8)
            if len(header) != 8:
                raise CheckpointError(path, "the file ends early (truncated).")
            (numel,) = struct.unpack("<q", header)
            storage = storages[key]
            raw = file.read(numel * np.dtype(storage.dtype).itemsize)
            storage.data = _storage_array(path, raw, storage, key, numel)
    return result


def _storage_array(path, raw: bytes, storage: _Storage, key: str, numel: int | None = None):
    itemsize = np.dtype(storage.dtype).itemsize
    expected = storage.numel if numel is None else numel
    if len(raw) != expected * itemsize:
        raise CheckpointError(
            path,
            f"storage {key!r} holds {len(raw)} bytes, expected {expected * itemsize} (truncated?).",
        )
    return np.frombuffer(raw, dtype=storage.dtype)
