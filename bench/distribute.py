"""Precision and backup cost on this machine, side by side.

1. Step time of one EfficientNet-Lite0 TransferModel (offline ImageNet
   weights, every layer training) under float32, mixed_float16 and
   mixed_bfloat16: three models built after `set_precision`, trained with
   `train_on_batch` on the same batch, interleaved rounds, medians.
2. Epoch time of `model.fit` against `fit_resumable` backing up every 10
   batches and every batch (same head-only model, same data), interleaved.

Usage:
    .venv/bin/python bench/distribute.py [--size 96] [--batch 16] [--rounds 6] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from _timing import interleaved_times

import kerastl

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def build(size: int, precision: str, train_all: bool) -> keras.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kerastl.set_precision(precision)
    keras.utils.set_random_seed(0)
    model = kerastl.TransferModel("efficientnet-lite0", num_classes=5, input_shape=(size, size, 3))
    if train_all:
        kerastl.unfreeze(model, recompile=False)
    else:
        kerastl.freeze(model, recompile=False)
    model.compile(keras.optimizers.Adam(1e-4), LOSS)
    kerastl.set_precision("float32")
    return model


def precision_table(x, y, args) -> None:
    models = {p: build(args.size, p, train_all=True) for p in PRECISIONS}
    for model in models.values():
        model.train_on_batch(x, y)
    times = interleaved_times(
        {p: lambda _, m=model: m.train_on_batch(x, y) for p, model in models.items()},
        args.rounds,
        args.steps,
    )
    base = statistics.median(times["float32"])
    print(
        f"\nLite0 {args.size}px batch {args.batch}, all layers training, "
        f"median of {args.rounds * args.steps} interleaved steps, {os.cpu_count()} CPUs"
    )
    print("| precision | step (ms) | ratio to float32 |\n| --- | ---: | ---: |")
    for precision, values in times.items():
        median = statistics.median(values)
        print(f"| {precision} | {median * 1e3:.1f} | {median / base:.2f} |")


def backup_table(x, y, args) -> None:
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch)
    batches = int(dataset.cardinality())
    model = build(args.size, "float32", train_all=False)
    model.fit(dataset, epochs=1, verbose=0)
    with tempfile.TemporaryDirectory() as root:

        def resumable(every):
            return lambda round_: kerastl.fit_resumable(
                model,
                dataset,
                epochs=1,
                save_freq=every,
                verbose=0,
                backup_dir=os.path.join(root, f"{every}-{round_}"),
            )

        runs = {
            "model.fit": lambda _: model.fit(dataset, epochs=1, verbose=0),
            "fit_resumable, backup every 10 batches": resumable(10),
            "fit_resumable, backup every batch": resumable(1),
        }
        times = interleaved_times(runs, args.rounds)
    base = statistics.median(times["model.fit"])
    print(
        f"\nLite0 {args.size}px head only, one epoch of {batches} batches of {args.batch}, "
        f"median of {args.rounds} interleaved epochs"
    )
    print("| training call | epoch (s) | ratio to fit |\n| --- | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / base:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch * 20, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, 5, len(x))
    precision_table(x[: args.batch], y[: args.batch], args)
    backup_table(x, y, args)


if __name__ == "__main__":
    main()
