"""What a `FineTuner` backup costs per epoch, for the recipes' models and stages.

For each recipe stage: the stage's training model (the cached stages' upper
part, or the whole model) compiled with the stage's own optimizer, timed on
batches shaped like the recipe's (`--steps` steps after a warm-up), and one
backup of the run as `FineTuner` writes it at an epoch's end (the whole
model, the training model with its optimizer, the best weights), timed
`--rounds` times. The epoch time is the step time times the recipe's
batches per epoch (elpv: 1,574 training cells; Rotten Tomatoes: 7,677
reviews; batch 32). Prints one table.

Usage:
    .venv/bin/python bench/backup_cost.py
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

from kerastl.app.builders import build_model
from kerastl.app.config import load_config
from kerastl.training.stage_compile import stage_loss, stage_optimizer
from kerastl.training.stage_plan import plan_stages
from kerastl.training.staged_backup import StagedBackup

RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes")
TRAIN_EXAMPLES = {"image_classification": 1574, "text_classification": 7677}
TEXT_LENGTH = 27  # mean word-piece tokens of a Rotten Tomatoes snippet


def _batch(model, split, recipe: str, size: int, rng):
    """A training batch for the stage: model inputs, or (cached stages) the
    frozen part's outputs on them."""
    labels = rng.integers(0, model.num_classes, size)
    if recipe == "text_classification":
        tokens = rng.integers(1000, 20000, (size, TEXT_LENGTH)).astype("int32")
        inputs = {"token_ids": tokens, "padding_mask": np.ones_like(tokens, dtype=bool)}
        if "segment_ids" in model.input:
            inputs["segment_ids"] = np.zeros_like(tokens)
    else:
        side = model.input_shape[1]
        inputs = rng.uniform(0, 255, (size, side, side, 3)).astype("float32")
    if split is None:
        return inputs, labels
    features = [np.asarray(f) for f in keras.tree.flatten(split.extractor(inputs))]
    return (features[0] if len(features) == 1 else features), labels


def measure(recipe: str, steps: int, rounds: int) -> list[dict]:
    config = load_config(os.path.join(RECIPES, f"{recipe}.yaml"))
    rows = []
    for number, stage in enumerate(config.stages, start=1):
        keras.utils.set_random_seed(0)
        model = build_model(config, ["a", "b"])
        planned = plan_stages(model, [stage], caching=True)[0]
        planned.prepare(model)
        split = planned.split
        trainer = model if split is None else split.trainer
        trainer.compile(stage_optimizer(stage, model, 1000), stage_loss(stage), jit_compile=False)
        x, y = _batch(model, split, recipe, config.data.batch_size, np.random.default_rng(0))
        trainer.train_on_batch(x, y)  # trace and build
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_on_batch(x, y)
        step = (time.perf_counter() - started) / steps
        epoch = step * math.ceil(TRAIN_EXAMPLES[recipe] / config.data.batch_size)
        folder = tempfile.mkdtemp(prefix="kerastl-backup-bench-")
        try:
            backup = StagedBackup(folder)
            best = [np.asarray(w) for w in model.weights]
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                backup.save({"epoch": 1}, model=model, fit_model=trainer, arrays={"best": best})
                times.append(time.perf_counter() - started)
            newest = max(p for p in os.listdir(folder) if p.startswith("state-"))
            size = sum(
                os.path.getsize(os.path.join(folder, name))
                for name in os.listdir(folder)
                if name.split("-")[-1].split(".")[0] == newest.split("-")[-1].split(".")[0]
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        rows.append(
            {
                "stage": f"{recipe.split('_')[0]} {number}:{stage.train}",
                "step_ms": 1000 * step,
                "epoch_s": epoch,
                "backup_s": float(np.median(times)),
                "mb": size / 2**20,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        "| recipe stage | ms/step | epoch s (recipe's batches) | backup s (median) "
        "| backup / epoch | one backup MB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for recipe in TRAIN_EXAMPLES:
        for row in measure(recipe, args.steps, args.rounds):
            print(
                f"| {row['stage']} | {row['step_ms']:.1f} | {row['epoch_s']:.1f} | "
                f"{row['backup_s']:.2f} | {100 * row['backup_s'] / row['epoch_s']:.1f}% | "
                f"{row['mb']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
