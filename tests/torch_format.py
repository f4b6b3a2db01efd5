"""Writes PyTorch zip checkpoints without torch, for tests.

The pickle names the same globals `torch.save` does (`torch._utils
._rebuild_tensor_v2`, `torch.FloatStorage`): stand-in modules are put in
`sys.modules` while pickling so the pickler can name them.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import sys
import types
import zipfile

import numpy as np

_STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


@contextlib.contextmanager
def _stand_in_torch():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in _STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch, utils
    finally:
        for key, module in saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = module


class _StorageRef:
    def __init__(self, key, storage_class, numel):
        self.key, self.storage_class, self.numel = key, storage_class, numel


class _Tensor:
    def __init__(self, utils, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())
        self.rebuild = utils._rebuild_tensor_v2

    def __reduce__(self):
        return (self.rebuild, self.args)


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", obj.storage_class, obj.key, "cpu", obj.numel)
        return None


def write_zip_checkpoint(path, tensors, *, strides=None, storage_bytes=None, payload=None):
    """Writes `tensors` (name -> array) as `torch.save` would.

    Args:
        strides: optional name -> element strides (to write non-contiguous views).
        storage_bytes: optional key -> raw bytes replacing a storage (corruption).
        payload: optional object to pickle instead of the state dict.
    """
    strides = strides or {}
    storages = {}
    with _stand_in_torch() as (torch, utils):
        state = collections.OrderedDict()
        for index, (name, array) in enumerate(tensors.items()):
            array = np.asarray(array)
            key = str(index)
            if name in strides:
                flat = np.ascontiguousarray(array.T).reshape(-1)  # column-major storage
            else:
                flat = np.ascontiguousarray(array).reshape(-1)
            storages[key] = flat.tobytes()
            ref = _StorageRef(key, getattr(torch, _STORAGE_NAMES[array.dtype]), flat.size)
            stride = strides.get(name) or tuple(
                int(np.prod(array.shape[i + 1 :])) for i in range(array.ndim)
            )
            state[name] = _Tensor(utils, ref, 0, array.shape, stride)
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=2).dump(state if payload is None else payload)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/version", "3\n")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", (storage_bytes or {}).get(key, raw))
