"""FineTuner's per-step cost over a hand-written Keras `fit` of the same model.

The same TransferModel (EfficientNet-Lite0, offline weights, `block6` and
above training, BatchNorm frozen, Adam), the same batches, one epoch per
call: once through `kerastl.FineTuner` (caching off, so both compute the
same thing; its recorder callback, class-weight-free), once with
`model.compile` + `model.fit`. Calls alternate (A, B, A, B, ...) so drift
in machine load hits both alike; the first call of each is dropped
(tracing). Target: FineTuner / Keras <= 1.02.

Usage:
    .venv/bin/python bench/overhead.py [--size 96] [--images 256] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from _timing import interleaved_times

import kerastl

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def model(size: int):
    keras.utils.set_random_seed(0)
    return kerastl.TransferModel("efficientnet-lite0", 2, input_shape=(size, size, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.images, args.size, args.size, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 2, args.images)))
    data = data.batch(32).cache().prefetch(tf.data.AUTOTUNE)
    steps = int(data.cardinality())

    tuned = model(args.size)
    tuner = kerastl.FineTuner(tuned, cache_features=False, verbose=0, restore_best=False)
    stage = kerastl.Stage(1, train="block6", lr=1e-4)

    plain = model(args.size)
    kerastl.freeze_to(plain, "block6", recompile=False)
    plain.compile(keras.optimizers.Adam(1e-4), LOSS, metrics=["accuracy"])

    times = interleaved_times(
        {
            "FineTuner": lambda _: tuner.fit(data, stages=[stage]),
            "keras fit": lambda _: plain.fit(data, epochs=1, verbose=0),
        },
        rounds=args.rounds + 1,
    )
    medians = {name: statistics.median(values[1:]) / steps * 1000 for name, values in times.items()}
    print(f"Lite0 {args.size} px, block6.. training, {steps} steps/epoch, {args.rounds} rounds")
    print("| path | ms/step (median) | ratio to keras fit |")
    print("| --- | ---: | ---: |")
    for name, value in medians.items():
        print(f"| {name} | {value:.1f} | {value / medians['keras fit']:.3f} |")


if __name__ == "__main__":
    main()
