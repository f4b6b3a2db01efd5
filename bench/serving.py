"""Serving latency: the TF SavedModel signature vs onnxruntime, with parity.

EfficientNet-Lite0 (offline ImageNet weights, 5-class head) exported with
`kerastl.export.saved_model` (`image_tensor` signature) and
`kerastl.export.onnx`, both checked against Keras on real photos (the two
scikit-learn ships). Latency per call at batch 1 and batch 32, the two
runtimes interleaved round by round (median), each with its default
threading on this machine.

Then MobileNetV3-Small (random weights) converted with and without
kerastl's tf2onnx transpose fix (`kerastl/export/tf2onnx_fixes.py`): node
and Transpose counts, and onnxruntime latency at batch 1 and 32 with its
graph optimizations on (the default) and off (as a runtime without
onnxruntime's own layout optimizer sees the file).

Usage:
    .venv/bin/python bench/serving.py [--size 224] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
from _timing import interleaved_times

import kerastl
import kerastl.export as kx
from kerastl.export import onnx_export, onnx_runtime


def photos(size: int, count: int) -> np.ndarray:
    images = [kerastl.load_image(path, (size, size)) for path in _sklearn_photos()]
    tiled = np.stack([images[i % len(images)] for i in range(count)])
    noise = np.random.default_rng(0).uniform(-8, 8, tiled.shape)  # distinct samples
    return np.clip(tiled + noise, 0, 255).astype("float32")


def _sklearn_photos():
    import sklearn

    folder = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images")
    return [os.path.join(folder, name) for name in ("china.jpg", "flower.jpg")]


def latency_table(saved, onnx_session, images, rounds):
    rows = []
    for batch in (1, 32):
        x = images[:batch]
        tensor = tf.constant(x)
        runs = {
            "savedmodel": lambda _, t=tensor: saved(images=t)["probabilities"].numpy(),
            "onnxruntime": lambda _, x=x: onnx_session.run(["probabilities"], {"images": x}),
        }
        for run in runs.values():  # warm-up
            run(0)
        times = interleaved_times(runs, rounds if batch == 1 else max(rounds // 3, 5))
        tf_ms = statistics.median(times["savedmodel"]) * 1e3
        ort_ms = statistics.median(times["onnxruntime"]) * 1e3
        rows.append((batch, tf_ms, ort_ms, tf_ms / ort_ms))
    return rows


def transpose_table(size, rounds, folder):
    model = kx.float32_copy(
        kerastl.TransferModel("mobilenetv3small", num_classes=5, weights=None,
                              input_shape=(size, size, 3))
    )  # fmt: skip
    sessions, counts = {}, {}
    for fixed in (False, True):
        proto = onnx_export.convert(model, "image_tensor", 17, fixes=fixed)
        path = os.path.join(folder, f"mnv3-{fixed}.onnx")
        with open(path, "wb") as file:
            file.write(proto.SerializeToString())
        for optimize in (True, False):
            name = ("with fix" if fixed else "tf2onnx as is") + (
                "" if optimize else ", ORT unoptimized"
            )
            counts[name] = (
                len(proto.graph.node), sum(n.op_type == "Transpose" for n in proto.graph.node)
            )  # fmt: skip
            sessions[name] = onnx_runtime.onnx_session(path, optimize=optimize)
    images = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype("float32")
    rows = []
    for batch in (1, 32):
        x = images[:batch]
        runs = {
            name: (lambda _, s=s, x=x: s.run(["probabilities"], {"images": x}))
            for name, s in sessions.items()
        }
        times = interleaved_times(runs, rounds if batch == 1 else max(rounds // 3, 5))
        for name in sessions:
            rows.append((name, batch, *counts[name], statistics.median(times[name]) * 1e3))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    model = kerastl.TransferModel(
        "efficientnet-lite0", num_classes=5, input_shape=(args.size, args.size, 3)
    )
    images = photos(args.size, 32)
    with tempfile.TemporaryDirectory() as folder:
        saved_path = kx.saved_model(
            model, os.path.join(folder, "sm"), "image_tensor", samples=images
        )
        onnx_path = kx.onnx(model, os.path.join(folder, "m.onnx"), samples=images)
        parity = kx.check_parity(model, [saved_path, onnx_path], images)
        saved = tf.saved_model.load(saved_path).signatures["image_tensor"]
        rows = latency_table(saved, onnx_runtime.onnx_session(onnx_path), images, args.rounds)
        transposes = transpose_table(args.size, args.rounds, folder)

    print(f"\nEfficientNet-Lite0 {args.size}px, median latency per call (ms)\n")
    print("| batch | TF SavedModel | onnxruntime | ONNX speed-up |")
    print("| ---: | ---: | ---: | ---: |")
    for batch, tf_ms, ort_ms, ratio in rows:
        print(f"| {batch} | {tf_ms:.1f} | {ort_ms:.1f} | {ratio:.2f}x |")
    print(f"\nParity with Keras on {parity.samples} photos:")
    for result in parity.results:
        kind = "ONNX" if result.target.endswith(".onnx") else "SavedModel"
        print(f"- {kind}: max abs diff {result.max_abs_diff:.2g}, top-1 agreement "
              f"{result.top1_agreement:.3f}")  # fmt: skip
    print(f"\nMobileNetV3-Small {args.size}px through tf2onnx (onnxruntime, ms)\n")
    print("| conversion | batch | nodes | Transpose | latency |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, batch, nodes, transposes_count, ms in transposes:
        print(f"| {name} | {batch} | {nodes} | {transposes_count} | {ms:.2f} |")


if __name__ == "__main__":
    main()
