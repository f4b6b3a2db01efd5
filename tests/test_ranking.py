"""Ranking candidate backbones by their frozen features (`kerastl.rank_backbones`)."""

import csv
import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

import kerastl
from kerastl.app.cli import main
from kerastl.app.rank import parse_candidates
from kerastl.training.ranking import logme


def test_logme_prefers_features_that_carry_the_labels():
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 2
    noise = rng.normal(size=(200, 16))
    informative = noise.copy()
    informative[:, 0] += 3.0 * labels  # one feature separates the classes
    assert logme(informative, labels) > logme(noise, labels) + 0.1
    wide = rng.normal(size=(40, 64))  # more features than examples: still finite
    assert np.isfinite(logme(wide, np.arange(40) % 3))


def _elpv(count, offset, size=64):
    """`count` elpv cells (half defective) read straight from the package's files."""
    root = os.path.join(
        importlib.util.find_spec("elpv_dataset").submodule_search_locations[0], "data"
    )
    with open(os.path.join(root, "labels.csv")) as file:
        rows = [line.split() for line in file if line.strip()]
    chosen = []
    for label in (0, 1):
        kept = [row for row in rows if int(float(row[1]) >= 0.5) == label]
        chosen += [(row[0], label) for row in kept[offset : offset + count // 2]]
    images = np.stack(
        [kerastl.load_image(os.path.join(root, path), (size, size), 1.0) for path, _ in chosen]
    )
    labels = np.array([label for _, label in chosen])
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)


@pytest.mark.slow
def test_a_random_weight_backbone_ranks_last_on_real_data(capsys):
    train, validation = _elpv(96, 0), _elpv(48, 200)
    rows = kerastl.rank_backbones(
        train,
        validation,
        ["efficientnet-lite0", ("efficientnet-lite0", None)],
        image_size=64,
    )
    assert [row["weights"] for row in rows] == ["default", None]  # ImageNet first
    assert rows[0]["score"] > rows[1]["score"]
    for row in rows:
        assert set(row) == {
            "name", "weights", "score", "probe_accuracy", "seconds", "parameters", "latency_ms",
            "image_size",
        }  # fmt: skip
        assert row["image_size"] == 64
        assert 0 <= row["probe_accuracy"] <= 1 and row["seconds"] > 0 and row["latency_ms"] > 0
    assert "kerastl: efficientnet-lite0 (default): LogME" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"method.*Received: method='knn'"):
        kerastl.rank_backbones(train, validation, ["efficientnet-lite0"], method="knn")

    # The augmentation's 8 dihedral views: LogME reads 8x the training features
    # (a different number), the order is kept, and a reshuffled training set
    # (a new order each pass) gives the same rows: labels are read with the features.
    views = kerastl.data.views_of(kerastl.data.augmentation("dihedral"), 8)
    shuffled = train.unbatch().shuffle(96, seed=1, reshuffle_each_iteration=True).batch(16)
    viewed = kerastl.rank_backbones(
        shuffled, validation, ["efficientnet-lite0", ("efficientnet-lite0", None)],
        image_size=64, views=views, verbose=0,
    )  # fmt: skip
    assert [row["weights"] for row in viewed] == ["default", None]
    assert abs(viewed[0]["score"] - rows[0]["score"]) > 1e-3
    assert viewed[0]["score"] > viewed[1]["score"]
    with pytest.raises(ValueError, match=r"all image or all text.*all-minilm-l6-v2': 'text'"):
        kerastl.rank_backbones(train, validation, ["efficientnet-lite0", "all-minilm-l6-v2"])


@pytest.mark.slow
def test_text_candidates_rank_on_raw_strings(tfds_dir):
    """MiniLM's sentence features beat its random initialisation on real
    reviews, each candidate tokenizing the raw strings itself."""
    reviews = kerastl.data.load_tfds("rotten_tomatoes", "train", data_dir=tfds_dir)
    train = reviews.take(256).shuffle(256, seed=0, reshuffle_each_iteration=True).batch(32)
    validation = reviews.skip(256).take(128).batch(32)
    rows = kerastl.rank_backbones(
        train,
        validation,
        ["all-minilm-l6-v2", ("all-minilm-l6-v2", None)],
        sequence_length=48,
        pooling="mean",
        verbose=0,
    )
    assert [row["weights"] for row in rows] == ["default", None]
    assert rows[0]["probe_accuracy"] > 0.6  # 128 reviews: chance is ~0.5 +- 0.045
    assert rows[0]["image_size"] is None


def test_an_extractor_is_reused_only_for_inputs_that_fit_its_signature():
    from kerastl.training.ranking import _fits

    run = tf.function(lambda x: x, input_signature=[tf.TensorSpec((None, 8, 8, 3), tf.float32)])
    assert _fits(run, tf.zeros((1, 8, 8, 3))) and _fits(run, tf.zeros((5, 8, 8, 3)))
    assert not _fits(run, tf.zeros((1, 8, 8, 3), tf.uint8))  # views may change the dtype
    assert not _fits(run, tf.zeros((1, 9, 9, 3)))
    assert not _fits(run, {"token_ids": tf.zeros((1, 8), tf.int32)})
    assert not _fits(None, tf.zeros((1, 8, 8, 3)))


def test_candidates_parse_names_and_weights():
    assert parse_candidates("efficientnet-lite0, efficientnet-lite2@none,vgg16@imagenet") == [
        ("efficientnet-lite0", "default"), ("efficientnet-lite2", None), ("vgg16", "imagenet"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"Received: 'efficientnet-lite0,,vgg16'"):
        parse_candidates("efficientnet-lite0,,vgg16")


@pytest.mark.slow
def test_rank_command_prints_the_table_and_writes_it_to_a_run_directory(tmp_path, capsys):
    """`kerastl rank` on a folder of images a user made: the table on stdout,
    the same rows in RUN_DIR/ranking.csv."""
    from checks import image_folder_of

    image_folder_of(tmp_path / "images", ["dark", "light"], 24)
    (tmp_path / "images" / "dark" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"name: shapes\noutput_dir: {tmp_path / 'runs'}\n"
        f"model: {{backbone: efficientnet-lite0, image_size: 32}}\n"
        f"data: {{source: 'folder:{tmp_path / 'images'}', batch_size: 8, augment: [dihedral]}}\n"
        "train: {cache_views: 2}\n"
    )
    candidates = "efficientnet-lite0@none,efficientnet-lite0"
    assert main(["rank", str(config), "--candidates", candidates, "--quiet"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "runs" / "shapes-rank" / "ranking.csv"
    assert f"Ranking: {path}" in out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["rank", "backbone", "LogME"]
    with open(path) as file:
        table = list(csv.DictReader(file))
    assert [(row["rank"], row["name"], row["weights"]) for row in table] == [
        ("1", "efficientnet-lite0", "default"), ("2", "efficientnet-lite0", "none"),
    ]  # fmt: skip
    assert lines[1].split()[:2] == ["1", "efficientnet-lite0"]
    assert lines[2].split()[:2] == ["2", "efficientnet-lite0@none"]
    assert float(table[0]["score"]) == pytest.approx(float(lines[1].split()[2]), abs=1e-4)
    assert {row["image_size"] for row in table} == {"32"}  # model.image_size
    assert "skipped" not in out  # --quiet
    assert main(["rank", str(config), "--candidates", "efficientnet-lite0", "--own-sizes"]) == 0
    # What `kerastl train` says of the data (before: nothing, the file skipped unsaid).
    skipped = f"kerastl: skipped 1 of 49 records in {tmp_path / 'images'} (1 x corrupt)\n"
    out = capsys.readouterr().out
    assert skipped in out
    # In a log, the folder check's progress in lines, as `kerastl train` (before: bars).
    assert f"kerastl: checking the images in {tmp_path / 'images'}: 49 images in" in out
    assert "━" not in out
    with open(tmp_path / "runs" / "shapes-rank-2" / "ranking.csv") as file:
        assert [row["image_size"] for row in csv.DictReader(file)] == ["224"]  # Lite0's own
    assert main(["rank", str(config), "--candidates", "efficientnet-lite9"]) == 2
    assert "Unknown backbone 'efficientnet-lite9'" in capsys.readouterr().err
    # Candidates are checked before any data is read: the missing folder is never reached.
    missing = f"--set=data.source=folder:{tmp_path / 'missing'}"
    mixed = "efficientnet-lite0,all-minilm-l6-v2"
    assert main(["rank", str(config), missing, "--candidates", mixed]) == 2
    assert "all image or all text backbones" in capsys.readouterr().err
