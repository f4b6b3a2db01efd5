"""SavedModel exports with Keras's `ExportArchive.track` against kerastl's fix.

Keras 3.15's `track(model)` makes the SavedModel's checkpoint hold every
weight twice (keras-team/keras#23553); `kerastl/export/keras_export_fixes.py`
tracks the same collections with each weight once. This script exports the
two recipes' backbones with offline weights through `kerastl.export.saved_model`
(its default signatures, its parity check included), once with the fix and once
with Keras's `track` in its place, alternating, and prints per way: the
export's time (median of the rounds), the size of its variables and of
`saved_model.pb`, and the time `tf.saved_model.load` takes to load it back
(what TF Serving pays at each version it loads).

Usage:
    .venv/bin/python bench/export_size.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
from _files import size_mb

import kerastl
import kerastl.export as kx
from kerastl.export import saved_model_export
from kerastl.export.keras_export_fixes import track_model


def _keras_track(archive, model) -> None:
    archive.track(model)


FIXED, KERAS = "kerastl (each weight once)", "Keras `track`"
WAYS = {FIXED: track_model, KERAS: _keras_track}


def models() -> dict:
    """The two recipes' backbones with their offline weights, and samples to check parity on."""
    lite0 = kerastl.TransferModel(
        "efficientnet-lite0", 2, input_shape=(224, 224, 3), class_names=["functional", "defective"]
    )
    images = np.random.default_rng(0).uniform(0, 255, (8, 224, 224, 3)).astype("float32")
    minilm = kerastl.TransferModel("all-minilm-l6-v2", 2, pooling="mean")
    texts = ["a gripping, beautifully shot film", "dull and far too long", "fine"] * 2
    return {
        "EfficientNet-Lite0, 224 px": (lite0, images),
        "MiniLM (all-minilm-l6-v2)": (minilm, texts),
    }


def measure(model, samples, rounds: int, directory: str) -> dict:
    """Per way: median export and load seconds, variables and graph megabytes."""
    times = {way: {"export": [], "load": []} for way in WAYS}
    sizes = {}
    for _ in range(rounds):
        for way, track in WAYS.items():
            path = os.path.join(tempfile.mkdtemp(dir=directory), "saved_model")
            saved_model_export.track_model = track
            try:
                started = time.perf_counter()
                kx.saved_model(model, path, samples=samples, verbose=0)
                times[way]["export"].append(time.perf_counter() - started)
            finally:
                saved_model_export.track_model = track_model
            started = time.perf_counter()
            tf.saved_model.load(path)
            times[way]["load"].append(time.perf_counter() - started)
            sizes[way] = (
                size_mb(os.path.join(path, "variables")),
                os.path.getsize(os.path.join(path, "saved_model.pb")) / 1e6,
            )
    return {
        way: {
            "export": statistics.median(times[way]["export"]),
            "load": statistics.median(times[way]["load"]),
            "variables": sizes[way][0],
            "graph": sizes[way][1],
        }
        for way in WAYS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| model | tracked with | export s | variables MB | saved_model.pb MB | load s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    ratios = []
    with tempfile.TemporaryDirectory() as directory:
        for name, (model, samples) in models().items():
            rows = measure(model, samples, args.rounds, directory)
            for way, row in rows.items():
                print(
                    f"| {name} | {way} | {row['export']:.2f} | {row['variables']:.1f} | "
                    f"{row['graph']:.2f} | {row['load']:.2f} |"
                )
            fixed, keras_row = rows[FIXED], rows[KERAS]
            ratios.append(
                f"{name}: export {keras_row['export'] / fixed['export']:.2f}x faster, "
                f"variables {keras_row['variables'] / fixed['variables']:.2f}x smaller, "
                f"load {keras_row['load'] / fixed['load']:.2f}x faster"
            )
    print()
    print("\n".join(f"- {line}" for line in ratios))


if __name__ == "__main__":
    main()
