"""Ranking candidate backbones by their frozen features (`kerastl.rank_backbones`)."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

import kerastl
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
            "name", "weights", "score", "probe_accuracy", "seconds", "parameters", "latency_ms"
        }  # fmt: skip
        assert 0 <= row["probe_accuracy"] <= 1 and row["seconds"] > 0 and row["latency_ms"] > 0
    assert "kerastl: efficientnet-lite0 (default): LogME" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"method.*Received: method='knn'"):
        kerastl.rank_backbones(train, validation, ["efficientnet-lite0"], method="knn")
