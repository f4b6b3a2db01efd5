"""FineTuner's per-step cost over a hand-written Keras `fit` of the same model.

The same TransferModel (EfficientNet-Lite0, offline weights, `block6` and
above training, BatchNorm frozen, Adam), the same batches: `--epochs`
epochs through `kerastl.FineTuner` (one stage, caching off so both compute
the same thing, run directory off), and the same epochs with
`model.compile` + `model.fit`. Epoch times come from a callback; the first
epoch of every call (tracing) is dropped. Calls alternate (A, B, A, B) so
drift in machine load hits both alike. Target: FineTuner / Keras <= 1.02
per step. A stage's one-time setup (freezing, compiling, tracing) is
reported apart (the call's time beyond `epochs` steady epochs, model
building included): it is paid once per stage, not per step.

Usage:
    .venv/bin/python bench/overhead.py [--size 96] [--images 512] [--epochs 4] [--rounds 2]
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
from _timing import EpochTimer

import kerastl

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def model(size: int):
    keras.utils.set_random_seed(0)
    return kerastl.TransferModel("efficientnet-lite0", 2, input_shape=(size, size, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.images, args.size, args.size, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 2, args.images)))
    data = data.batch(32).cache().prefetch(tf.data.AUTOTUNE)
    steps = int(data.cardinality())
    stage = kerastl.Stage(args.epochs, train="block6", lr=1e-4)

    def with_tuner(timer):
        tuner = kerastl.FineTuner(
            model(args.size), cache_features=False, callbacks=(timer,), verbose=0
        )
        tuner.fit(data, stages=[stage])

    def with_keras(timer):
        plain = model(args.size)
        kerastl.freeze_to(plain, "block6", recompile=False)
        plain.compile(keras.optimizers.Adam(1e-4), LOSS, metrics=["accuracy"])
        plain.fit(data, epochs=args.epochs, callbacks=[timer], verbose=0)

    steady: dict[str, list[float]] = {"FineTuner": [], "keras fit": []}
    setup: dict[str, list[float]] = {"FineTuner": [], "keras fit": []}
    for _ in range(args.rounds):
        for name, run in (("FineTuner", with_tuner), ("keras fit", with_keras)):
            timer = EpochTimer()
            started = time.perf_counter()
            run(timer)
            total = time.perf_counter() - started
            steady[name] += timer.seconds[1:]
            setup[name].append(
                total - sum(timer.seconds[1:]) - statistics.median(timer.seconds[1:])
            )
    step = {name: statistics.median(values) / steps * 1000 for name, values in steady.items()}
    print(
        f"Lite0 {args.size} px, block6.. training, {steps} steps/epoch, "
        f"{args.epochs} epochs x {args.rounds} rounds"
    )
    print("| path | ms/step (median, epochs 2..) | ratio to keras fit | one-time setup (s) |")
    print("| --- | ---: | ---: | ---: |")
    for name, value in step.items():
        print(
            f"| {name} | {value:.1f} | {value / step['keras fit']:.3f} | "
            f"{statistics.median(setup[name]):.1f} |"
        )
    for name, values in steady.items():
        print(f"{name} epochs (s): {', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
