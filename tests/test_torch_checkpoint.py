"""The torch-free checkpoint reader: real files, round trips, hostile files."""

import glob
import os
import pickle
import zipfile

import numpy as np
import pytest
from torch_format import write_zip_checkpoint

from kerastl.backbones.assets import LITE0, asset_path
from kerastl.backbones.efficientnet_lite import rename_to_timm
from kerastl.backbones.torch_checkpoint import CheckpointError, read_state_dict


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_reads_the_packaged_legacy_checkpoint():
    weights = read_state_dict(asset_path(LITE0))
    assert len(weights) == 296
    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert weights["_conv_stem.weight"].dtype == np.float32
    assert weights["_fc.weight"].shape == (1000, 1280)
    assert weights["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.isfinite(weights["_fc.weight"]).all() and np.abs(weights["_fc.weight"]).sum() > 0


def test_zip_checkpoint_round_trip_with_strided_tensor(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "w": rng.standard_normal((3, 4)).astype("float32"),
        "steps": np.array([7, 8], "int64"),
        "t": rng.standard_normal((2, 5)).astype("float32"),
    }
    path = tmp_path / "model.pth"
    write_zip_checkpoint(path, tensors, strides={"t": (1, 2)})
    loaded = read_state_dict(path)
    assert list(loaded) == ["w", "steps", "t"]
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)
        assert loaded[name].dtype == array.dtype


def test_pickle_that_calls_anything_else_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": _RunsCode(marker)}, protocol=2))
    with pytest.raises(
        CheckpointError, match=r"evil.pth.*refused to load the global (posix|os)\.system"
    ):
        read_state_dict(path)
    assert not marker.exists()


def test_legacy_stream_with_hostile_state_dict_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.pth"
    with open(path, "wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        pickle.dump({"w": _RunsCode(marker)}, file, protocol=2)
    with pytest.raises(CheckpointError, match=r"evil_legacy.pth.*refused"):
        read_state_dict(path)
    assert not marker.exists()


def test_truncated_zip_is_reported(tmp_path):
    path = tmp_path / "full.pth"
    write_zip_checkpoint(path, {"w": np.ones((64, 64), "float32")})
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.pth.*truncated or corrupt"):
        read_state_dict(cut)


def test_truncated_legacy_checkpoint_is_reported(tmp_path):
    with open(asset_path(LITE0), "rb") as file:
        data = file.read()
    cut = tmp_path / "lite0_cut.pth"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"lite0_cut.pth.*(truncated|ends early)"):
        read_state_dict(cut)


def test_storage_shorter_than_its_tensors_is_reported(tmp_path):
    path = tmp_path / "short.pth"
    write_zip_checkpoint(path, {"w": np.ones((4,), "float32")}, storage_bytes={"0": b"\0" * 8})
    with pytest.raises(CheckpointError, match=r"storage '0' holds 8 bytes, expected 16"):
        read_state_dict(path)


def test_files_that_are_not_state_dicts_are_reported(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match=r"garbage\.pth"):
        read_state_dict(garbage)
    listing = tmp_path / "list.pth"
    write_zip_checkpoint(listing, {}, payload=[1, 2, 3])
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        read_state_dict(listing)
    with pytest.raises(CheckpointError, match="cannot open"):
        read_state_dict(tmp_path / "missing.pth")


def test_wrong_key_set_names_missing_and_unexpected_keys():
    weights = dict(read_state_dict(asset_path(LITE0)))
    del weights["_conv_head.weight"]
    weights["_extra.weight"] = np.zeros(1, "float32")
    with pytest.raises(
        CheckpointError, match=r"missing \['_conv_head.weight'\].*unexpected \['_extra.weight'\]"
    ):
        rename_to_timm(weights, "lite0.pth")


def test_rename_covers_every_tensor_but_the_batch_counters():
    weights = read_state_dict(asset_path(LITE0))
    renamed = rename_to_timm(weights)
    counters = [k for k in weights if k.endswith("num_batches_tracked")]
    assert len(renamed) == len(weights) - len(counters)
    assert renamed["blocks.6.0.conv_pwl.weight"].shape == (320, 1152, 1, 1)
    assert renamed["blocks.0.0.conv_pw.weight"].shape == (16, 32, 1, 1)


def test_no_stray_files_next_to_the_package():
    # Reading must not write anything into site-packages.
    folder = os.path.dirname(asset_path(LITE0))
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*"))) == [
        "efficientnet-lite0-57934424.pth"
    ]
