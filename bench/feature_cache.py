"""Epoch time with cached features vs recomputing the frozen layers, same accuracy.

EfficientNet-Lite0 (offline ImageNet weights) on elpv at 128 px (the image
recipe's data), two kinds of stages, each run with `cache_features` on and
off from the same initial weights and data order:

- head: the backbone frozen; cached = pooled features computed once;
- block6: block6, block7, top_conv and the head train (BatchNorm frozen);
  cached = the block6 input computed once;
- head + dihedral: the head stage with the `orientation_free` augmentation
  (a random symmetry of the square per image): recomputed = the augmented
  images through the frozen backbone every epoch; cached = the features of
  the 8 symmetries computed once (`cache_views=8`), one served per image
  each epoch.

An epoch's time is taken from the second epoch on (the first includes
tracing); the one-time extraction is reported apart, with the epoch count
after which caching has paid for itself. The best validation balanced
accuracy over the epochs shows that both paths learn the same thing (the
cached path shuffles its stored batches each epoch, the recomputed one the
examples: the orders differ, so the scores match only up to that noise).

Usage:
    .venv/bin/python bench/feature_cache.py [--size 128] [--limit 1024] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
from _timing import EpochTimer

import kerastl
from kerastl.app.builders import build_model
from kerastl.app.config import load_config
from kerastl.app.data import load_data


def run(config, data, stage, cache, augment=False):
    keras.utils.set_random_seed(0)
    model = build_model(config, data.class_names)
    timer = EpochTimer()
    views = {}
    if augment:
        views["augmentation"] = kerastl.data.augmentation("orientation_free")
        views["cache_views"] = 8 if cache else None
    tuner = kerastl.FineTuner(
        model,
        cache_features=cache,
        **views,
        class_weight="balanced",
        metrics=("balanced_accuracy",),
        restore_best=False,
        callbacks=(timer,),
        verbose=0,
    )
    started = time.perf_counter()
    history = tuner.fit(data.train, data.validation, stages=[stage])
    total = time.perf_counter() - started
    epoch = statistics.median(timer.seconds[1:])
    return {
        "epoch": epoch,
        "setup": total - sum(timer.seconds),
        "first": timer.seconds[0],
        "score": max(history.history["val_balanced_accuracy"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    config = load_config(
        os.path.join(os.path.dirname(__file__), "..", "recipes", "image_classification.yaml"),
        [f"model.image_size={args.size}", f"data.limit={args.limit}", "data.validation_limit=320"],
    )
    data = load_data(config)
    stages = {
        "head": (kerastl.Stage(args.epochs, train="head", lr=3e-3), False),
        "block6": (kerastl.Stage(args.epochs, train="block6", lr=3e-4), False),
        "head + dihedral": (kerastl.Stage(args.epochs, train="head", lr=3e-3), True),
    }
    print(f"Lite0 on elpv, {args.size} px, {args.limit} training images, {args.epochs} epochs")
    print("| stage | path | epoch (s) | first epoch + caching (s) | best val bal. acc | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, (stage, augment) in stages.items():
        uncached = run(config, data, stage, cache=False, augment=augment)
        cached = run(config, data, stage, cache=True, augment=augment)
        for label, result in (("recomputed", uncached), ("cached", cached)):
            ratio = uncached["epoch"] / result["epoch"]
            print(
                f"| {name} | {label} | {result['epoch']:.2f} | "
                f"{result['first'] + result['setup']:.1f} | {result['score']:.4f} | {ratio:.1f}x |"
            )
        saved = uncached["epoch"] - cached["epoch"]
        extra = (cached["first"] + cached["setup"]) - (uncached["first"] + uncached["setup"])
        print(f"|  | caching pays off after | {max(extra, 0) / saved:.1f} epochs |  |  |  |")


if __name__ == "__main__":
    main()
