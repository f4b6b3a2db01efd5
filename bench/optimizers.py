"""Step time with per-group optimizers over a single Adam, side by side.

One EfficientNet-Lite0 TransferModel (offline ImageNet weights), fully
unfrozen, trained with `train_on_batch` on the same batch under three
optimizers: a single Adam; a `group_optimizer` with 3 groups (head / top
stages / the rest); and `discriminative_optimizer(decay=...)` with one Adam
per fine group (layer-wise decay, 19 groups). Runs are interleaved (A, B, C,
A, B, C, ...) so drift in machine load hits all three alike; the table shows
medians and ratios to the single Adam.

Usage:
    .venv/bin/python bench/optimizers.py [--size 96] [--batch 16] [--rounds 8] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from _timing import interleaved_times

import kerastl

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def make_model(size: int, optimizer_factory):
    keras.utils.set_random_seed(0)
    model = kerastl.TransferModel("efficientnet-lite0", num_classes=5, input_shape=(size, size, 3))
    kerastl.unfreeze(model, recompile=False)
    model.compile(optimizer_factory(model), LOSS)
    return model


OPTIMIZERS = {
    "single Adam": lambda m: keras.optimizers.Adam(1e-4),
    "group_optimizer, 3 groups": lambda m: kerastl.group_optimizer(
        m,
        {"head": keras.optimizers.Adam(1e-3), ("block7", "top_conv"): keras.optimizers.Adam(1e-4)},
        default=keras.optimizers.Adam(1e-5),
    ),
    "layer-wise decay, per block": lambda m: kerastl.discriminative_optimizer(
        m, base_lr=1e-3, decay=0.8
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, 5, args.batch)
    models = {name: make_model(args.size, factory) for name, factory in OPTIMIZERS.items()}
    groups = {
        name: len(model.optimizer.optimizers) if hasattr(model.optimizer, "optimizers") else 1
        for name, model in models.items()
    }
    for model in models.values():
        model.train_on_batch(x, y)  # trace and build
    times = interleaved_times(
        {name: lambda _, m=model: m.train_on_batch(x, y) for name, model in models.items()},
        args.rounds,
        args.steps,
    )
    base = statistics.median(times["single Adam"])
    print(
        f"EfficientNet-Lite0 {args.size}x{args.size}, batch {args.batch}, all layers training, "
        f"median of {args.rounds * args.steps} interleaved steps, {os.cpu_count()} CPUs"
    )
    print(f"{'optimizer':<30} {'sub-optimizers':>14} {'step (ms)':>10} {'ratio':>7}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<30} {groups[name]:>14} {median * 1000:>10.1f} {median / base:>7.3f}")


if __name__ == "__main__":
    main()
