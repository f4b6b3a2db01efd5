"""What each fine-tuning ingredient buys: recipe variants side by side, honestly scored.

Each variant is the recipe's YAML with a few overrides, run by `kerastl
train`'s own code (`kerastl.app.run.train`). The best epoch is chosen on the
validation data held out of the training split; the test split is evaluated
once, at the end, plain and with the recipe's test-time views. One row per
variant: best validation score, the best probe epoch and the gain of the
later stages over it, test accuracy and balanced accuracy (plain / TTA),
training seconds.

Usage:
    .venv/bin/python bench/ablation.py image                 # every image variant
    .venv/bin/python bench/ablation.py text --only recipe probe
    .venv/bin/python bench/ablation.py image --set data.limit=256   # a quick look
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _variants import chosen_variants, recipe_yaml, variant_arguments

from kerastl.app.config import load_config
from kerastl.app.run import train

TEXT_PROBE = "{epochs: 4, train: head, lr: 3.0e-3}"  # the text recipe's probe until 2026-11-30
TEXT_ALL = (  # the text recipe's one stage, without its epochs
    "train: all, lr: 5.0e-5, optimizer: adamw, weight_decay: 0.01, warmup: 0.1, schedule: cosine"
)

VARIANTS = {
    "image": {
        # The recipe before augmentation: probe, then block6.. on one view.
        "old recipe: no augmentation, probe 8 + block6 6": [
            "data.augment=[]",
            "data.tta=none",
            "stages=[{epochs: 8, train: head, lr: 3.0e-3}, {epochs: 6, train: block6, "
            "lr: 3.0e-4, lr_mult: 3, warmup: 0.3}]",
        ],
        "8 cached views, probe 6 + all layers 8 (lr 1e-3, x10 spread)": [
            "stages.1={epochs: 8, train: all, lr: 1.0e-3, lr_mult: 10, warmup: 0.2, "
            "schedule: cosine}",
        ],
        "8 cached views, probe 8 + block6 10": ["stages.0.epochs=8", "stages.1.epochs=10"],
        "recipe: 8 cached views, probe 6 + block6 8": [],
        "recipe at 192 px, from block5": ["model.image_size=192", "stages.1.train=block5"],
        # MixUp images are blended: the block6 stage trains end to end (no cache).
        "recipe, block6 stage with MixUp 0.2": ["stages.1.mixup=0.2"],
        # Stochastic depth in the trained blocks (block6b-d); still cached at block6.
        "recipe, block6 stage with drop path 0.2": ["stages.1.drop_path=0.2"],
        # Progressive resizing: a third stage, all layers end to end at 96 px
        # (validated at 128 px), then the model as trained is chosen on validation.
        "recipe + all layers 4 at 96 px": [
            "stages=[{epochs: 6, train: head, lr: 3.0e-3}, {epochs: 8, train: block6, "
            "lr: 3.0e-4, lr_mult: 3, warmup: 0.2, schedule: cosine}, {epochs: 4, train: all, "
            "lr: 1.0e-4, lr_mult: 10, warmup: 0.2, schedule: cosine, image_size: 96}]",
        ],
    },
    "text": {
        "old recipe: probe 6 + top two layers 2 (decay 0.7)": [
            "stages=[{epochs: 6, train: head, lr: 3.0e-3}, {epochs: 2, train: layer_4, "
            "lr: 1.0e-4, lr_decay: 0.7, warmup: 0.1}]"
        ],
        "probe 4 + all layers 2": [f"stages=[{TEXT_PROBE}, {{{TEXT_ALL}, epochs: 2}}]"],
        "probe 4 + all layers 1 (the recipe until 2026-11-30)": [
            f"stages=[{TEXT_PROBE}, {{{TEXT_ALL}, epochs: 1}}]"
        ],
        "recipe: all layers 1": [],
        "recipe, seed 1": ["train.seed=1"],
        "probe 4 + all layers 1, seed 1": [
            f"stages=[{TEXT_PROBE}, {{{TEXT_ALL}, epochs: 1}}]",
            "train.seed=1",
        ],
    },
}


def main() -> None:
    args = variant_arguments(__doc__.split("\n")[0], VARIANTS)
    yaml = recipe_yaml(args.recipe)
    output = tempfile.mkdtemp(prefix="kerastl-ablation-")
    print(f"{args.recipe} recipe variants; runs in {output}")
    print(
        "| variant | best val | probe best | later stages vs probe | test acc (plain / TTA) "
        "| test bal. acc (plain / TTA) | training s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, overrides in chosen_variants(VARIANTS, args).items():
        config = load_config(yaml, [f"output_dir={output}", "export=false", *overrides, *args.set])
        result = train(config, verbose=0)
        per_stage = result.best_per_stage
        test = result.test
        tta = test.tta or test.plain
        probed = per_stage[0][0].endswith(":head")
        probe = f"{per_stage[0][1]:.4f}" if probed else "no probe"
        later = probed and len(per_stage) > 1
        gain = f"{per_stage[-1][1] - per_stage[0][1]:+.4f}" if later else "-"
        print(
            f"| {name} | {result.best[0]:.4f} | {probe} | {gain} | "
            f"{test.plain.accuracy:.4f} / {tta.accuracy:.4f} | "
            f"{test.plain.balanced_accuracy:.4f} / {tta.balanced_accuracy:.4f} | "
            f"{result.seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
