"""Training-step time by how much of the backbone trains, side by side.

Builds one EfficientNet-Lite0 TransferModel (the offline ImageNet weights)
and times `train_on_batch` with the backbone frozen (head only), with the top
stages unfrozen (`freeze_to`), and fully unfrozen, all in one process on the
same batches. Prints a table of median step times and ratios to full
fine-tuning.

Usage:
    .venv/bin/python bench/bench_freezing.py [--size 128] [--batch 16] [--steps 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import kerastl

PLANS = (
    ("head only (freeze)", lambda m: kerastl.freeze(m)),
    ("top_conv + head", lambda m: kerastl.freeze_to(m, "top_conv")),
    ("block6..head", lambda m: kerastl.freeze_to(m, "block6")),
    ("all (unfreeze)", lambda m: kerastl.unfreeze(m)),
)


def time_plan(model, plan, x, y, steps: int) -> float:
    plan(model)
    model.compile(
        keras.optimizers.Adam(1e-4),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.train_on_batch(x, y)  # trace and build the optimizer
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = kerastl.TransferModel(
        "efficientnet-lite0", num_classes=5, input_shape=(args.size, args.size, 3)
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, 5, args.batch)
    results = [(name, time_plan(model, plan, x, y, args.steps)) for name, plan in PLANS]
    full = results[-1][1]
    print(
        f"EfficientNet-Lite0, {args.size}x{args.size}, batch {args.batch}, "
        f"median of {args.steps} steps, {os.cpu_count()} CPUs"
    )
    print(f"{'what trains':<20} {'step (ms)':>10} {'speed-up vs all':>16}")
    for name, seconds in results:
        print(f"{name:<20} {seconds * 1000:>10.1f} {full / seconds:>15.2f}x")


if __name__ == "__main__":
    main()
