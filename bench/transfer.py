"""The transfer report on both recipes' default data: scratch / probe / fine-tuned.

Runs `kerastl.app.run.train` on `recipes/image_classification.yaml` and
`recipes/text_classification.yaml` with `transfer_report: true`: the
linear probe and the from-scratch network get the same number of epochs as
the fine-tuned stages; the table gives each one's best validation value
and wall time. `--set` overrides apply to both (e.g. `data.limit=1000` for
a quicker, smaller run).

Usage:
    .venv/bin/python bench/transfer.py [--only image|text] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from kerastl.app.config import load_config
from kerastl.app.run import train

RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("image", "text"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", default="runs/bench-transfer")
    args = parser.parse_args()
    tables = []
    for kind in ("image", "text"):
        if args.only not in (None, kind):
            continue
        config = load_config(
            os.path.join(RECIPES, f"{kind}_classification.yaml"),
            ["transfer_report=true", "export=false", f"output_dir={args.output_dir}", *args.set],
        )
        result = train(config, verbose=0)
        tables.append((kind, config, result.transfer))
    for kind, config, rows in tables:
        print(f"\n{kind}: {config.model.backbone} on {config.data.source}, {config.train.monitor}")
        print("| model | best | at epoch | seconds |")
        print("| --- | ---: | ---: | ---: |")
        for row in rows:
            best = "n/a" if row["best"] is None else f"{row['best']:.4f}"
            print(f"| {row['model']} | {best} | {row['epoch']} | {row['seconds']} |")
        if rows[-1].get("negative_transfer"):
            print("NEGATIVE TRANSFER")


if __name__ == "__main__":
    main()
