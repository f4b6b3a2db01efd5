"""LoRA vs fine-tuning vs the linear probe, on both recipes' data, side by side.

Each variant is the recipe's YAML with its last stage replaced, run by
`kerastl train`'s own code (`kerastl.app.run.train`) in a child process of
its own, so its peak memory (RSS, from `wait4`) is its own. The best epoch
is chosen on the validation data held out of the training split; the test
split is evaluated once, at the end. One row per variant: test accuracy,
the last stage's trainable parameters, its seconds per epoch and per step
(the stage's own feature caching included),
the run's peak RSS, and what one more task costs to store (the adapter file
and head for LoRA, the whole model's weights for fine-tuning, the head for
the probe).

Usage:
    .venv/bin/python bench/lora.py text
    .venv/bin/python bench/lora.py image
    .venv/bin/python bench/lora.py text --set data.limit=2000   # a quick look
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _child import run_child
from _variants import chosen_variants, recipe_yaml, variant_arguments

VARIANTS = {
    "text": {
        "probe (stage 1 only)": ["stages=[{epochs: 4, train: head, lr: 3.0e-3}]"],
        # LoRA at 60x fine-tuning's rate, for three epochs (chosen on validation:
        # one epoch at 1e-3 stayed 3 points under fine-tuning); same schedule.
        # After the probe, as measured (the recipe then had the probe first).
        "LoRA r=8, query/value of all 6 layers": [
            "stages=[{epochs: 4, train: head, lr: 3.0e-3}, {epochs: 3, train: lora, rank: 8, "
            "lr: 3.0e-3, optimizer: adamw, weight_decay: 0.01, warmup: 0.1, schedule: cosine}]"
        ],
        "fine-tuning, every layer (the recipe)": [],
    },
    "image": {
        "probe (stage 1 only)": ["stages=[{epochs: 6, train: head, lr: 3.0e-3}]"],
        "LoRA r=8, convolutions of block6-top_conv": [
            "stages.1={epochs: 8, train: block6, rank: 8, lr: 3.0e-3, warmup: 0.2, "
            "schedule: cosine}"
        ],
        "fine-tuning block6-top_conv (the recipe)": [],
    },
}


def main() -> None:
    args = variant_arguments(__doc__.split("\n")[0], VARIANTS)
    output = tempfile.mkdtemp(prefix="kerastl-lora-")
    print(f"{args.recipe} recipe: probe / LoRA / fine-tuning; runs in {output}")
    print(
        "| variant | best val | test acc | trainable params (last stage) | s/epoch (last stage) "
        "| ms/step | peak RSS GB | stored per task |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, overrides in chosen_variants(VARIANTS, args).items():
        result_path = os.path.join(output, f"{len(os.listdir(output))}.json")
        command = [sys.executable, __file__, "--child", args.recipe, result_path, output]
        command += [*overrides, *args.set]
        row, peak_gb, status = run_child(command, result_path)
        if row is None:
            print(f"| {name} | failed (exit status {status}) |", flush=True)
            continue
        print(
            f"| {name} | {row['best']:.4f} | {row['test']:.4f} | {row['trainable']:,} "
            f"| {row['epoch_seconds']:.0f} | {row['step_ms']:.0f} | {peak_gb:.2f} "
            f"| {_size(row['stored_bytes'])} |",
            flush=True,
        )


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 else f"{count / 2**10:.0f} KB"


def child(recipe: str, result_path: str, output: str, overrides: list[str]) -> None:
    """One variant, run in this process; writes its row's numbers to `result_path`."""
    import numpy as np

    import kerastl
    from kerastl.app.config import load_config
    from kerastl.app.run import train
    from kerastl.peft import adapted_layers

    yaml = recipe_yaml(recipe)
    config = load_config(yaml, [f"output_dir={output}", "export=false", *overrides])
    result = train(config, verbose=0)
    model = result.model
    last = result.stages[-1]
    stored = os.path.join(result.run_dir, "stored")
    if adapted_layers(model):
        stored = kerastl.save_lora(model, stored + ".lora.npz")
    else:  # the probe stores its head; fine-tuning every weight (no optimizer state)
        probe = last["stage"].endswith(":head")
        stored += ".npz"
        np.savez(stored, *[np.asarray(v) for v in (model.head_layer if probe else model).weights])
    row = {
        "best": result.best[0],
        "test": result.test.plain.accuracy,
        "trainable": last["trainable"],
        "epoch_seconds": last["seconds"] / last["epochs"],
        "step_ms": 1000 * last["seconds"] / (last["epochs"] * last["steps"]),
        "stored_bytes": os.path.getsize(stored),
    }
    with open(result_path, "w") as file:
        json.dump(row, file)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        main()
