"""Keras's AdamW against kerastl's `FusedAdamW`, side by side, on the text recipe's step.

all-MiniLM-L6-v2 (offline weights) with every layer training, batch 32 of
32 tokens, AdamW 5e-5 with weight decay 0.01 under the recipe's warm-up +
cosine schedule. For each optimizer: the first `train_on_batch` (trace, build
and one step), the median training step, and the median update alone (the
optimizer's `apply` on fixed gradients, in a `tf.function`). Steps are
interleaved (Keras, fused, Keras, ...) so drift in machine load hits both.

Usage:
    .venv/bin/python bench/fused_adam.py [--rounds 8] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from _timing import interleaved_times

import kerastl
from kerastl.fused_adam import FusedAdamW
from kerastl.training.schedules import warmup_cosine

BATCH, LENGTH = 32, 32
OPTIMIZERS = {"Keras AdamW": keras.optimizers.AdamW, "kerastl FusedAdamW": FusedAdamW}


def make_model(optimizer_class):
    """MiniLM + head, compiled with `optimizer_class` under the recipe's schedule."""
    keras.utils.set_random_seed(0)
    model = kerastl.TransferModel("all-minilm-l6-v2", num_classes=2, pooling="mean", dropout=0.1)
    schedule = warmup_cosine(240, 24)(5e-5)
    options = {} if optimizer_class is keras.optimizers.SGD else {"weight_decay": 0.01}
    model.compile(
        optimizer_class(schedule, **options),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _update(model):
    """The optimizer's `apply` alone, on fixed gradients, as a `tf.function`."""
    variables = model.trainable_variables
    gradients = [tf.random.normal(v.shape, stddev=1e-3, seed=1) for v in variables]
    return tf.function(lambda: model.optimizer.apply(gradients, variables))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(1000, 20000, (BATCH, LENGTH)).astype("int32"),
        "padding_mask": np.ones((BATCH, LENGTH), bool),
        "segment_ids": np.zeros((BATCH, LENGTH), "int32"),
    }
    y = rng.integers(0, 2, BATCH)
    warm_up = make_model(keras.optimizers.SGD)  # TF's one-time start-up, charged to neither
    warm_up.train_on_batch(x, y)
    models, first, updates = {}, {}, {}
    for name, optimizer_class in OPTIMIZERS.items():
        models[name] = model = make_model(optimizer_class)
        started = time.perf_counter()
        model.train_on_batch(x, y)
        first[name] = time.perf_counter() - started
        updates[name] = update = _update(model)
        update()  # trace
    steps = interleaved_times(
        {name: lambda _, m=model: m.train_on_batch(x, y) for name, model in models.items()},
        args.rounds,
        args.steps,
    )
    alone = interleaved_times({name: lambda _, u=u: u() for name, u in updates.items()}, 20)
    parameters = sum(int(np.prod(v.shape)) for v in models["Keras AdamW"].trainable_variables)
    print(
        f"MiniLM, every layer ({parameters / 1e6:.1f}M weights), batch {BATCH} x {LENGTH} tokens, "
        f"{os.cpu_count()} CPUs; medians of {args.rounds * args.steps} interleaved steps, "
        "20 updates"
    )
    print(f"{'optimizer':<20} {'first call s':>12} {'step ms':>9} {'update ms':>10}")
    for name in OPTIMIZERS:
        step, update = statistics.median(steps[name]), statistics.median(alone[name])
        print(f"{name:<20} {first[name]:>12.1f} {step * 1000:>9.0f} {update * 1000:>10.1f}")
    ours, theirs = (statistics.median(steps[name]) for name in reversed(OPTIMIZERS))
    print(f"step ratio fused / Keras: {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
