"""What the image recipe does after training, each part timed beside `model.predict`
on the same images (defects issue, item 5).

    .venv/bin/python bench/post_training.py runs/elpv-lite0

Loads a finished run's `model.keras` and the run's data (its `config.yaml`),
then times, in one process: the test split evaluated plain and over the 8
dihedral views (`kerastl.evaluate`), the validation confusion matrix, the
temperature fitted on validation (`kerastl.calibrate`), the run report
without and with its look at the mistakes (top losses, Grad-CAM,
calibration: `insight`), the SavedModel export; and
`model.predict` over exactly the images each of them runs (the test split's 8
views, the validation split). The ratio column is each part over its
`predict` time; the last row is the whole phase. Last, what calibrating and
the report's look at the mistakes add, as a share of the run's training time
(the `seconds` of its `report.md`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
from _timing import machine

import kerastl
from kerastl.app.config import load_config
from kerastl.app.data import load_data
from kerastl.data.augment import dihedral_view
from kerastl.training import run_directory


def _timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def _views(dataset, count: int):
    """The dataset's images under each of `count` dihedral views, one after another."""
    images = dataset.map(lambda x, *rest: x)
    viewed = [images.map(lambda x, v=v: dihedral_view(x, v)) if v else images for v in range(count)]
    combined = viewed[0]
    for other in viewed[1:]:
        combined = combined.concatenate(other)
    return combined


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    args = parser.parse_args(argv)
    config = load_config(os.path.join(args.run_dir, "config.yaml"))
    data = load_data(config)
    model = kerastl.load_model(os.path.join(args.run_dir, "model.keras"))
    model.predict(next(iter(data.test))[0], verbose=0)  # traced once before any timing
    rows = []
    views = 8 if config.data.tta == "dihedral" else (2 if config.data.tta == "flip" else 1)

    seconds, _ = _timed(lambda: kerastl.evaluate(model, data.test, tta=config.data.tta, verbose=0))
    reference, _ = _timed(lambda: model.predict(_views(data.test, views), verbose=0))
    rows.append((f"test, {views} views (evaluate)", seconds, reference))

    seconds, _ = _timed(
        lambda: run_directory.confusion_matrix(model, data.validation, model.num_classes)
    )
    reference, _ = _timed(lambda: model.predict(data.validation, verbose=0))
    rows.append(("validation confusion matrix", seconds, reference))

    with tempfile.TemporaryDirectory() as scratch:
        tuner = kerastl.FineTuner(model, run_dir=scratch, verbose=0)
        recorder = run_directory.RunRecorder(model, scratch, "val_loss")
        recorder.rows = [{"epoch": 1, "stage": "1:head", "loss": 1.0, "val_loss": 1.0}]
        tuner.recorder = recorder
        tuner.stage_starts, tuner.stage_summaries = [0], [{"stage": "1:head", "epochs": 1}]
        calibrated, _ = _timed(lambda: kerastl.calibrate(model, data.validation))
        rows.append(("temperature fitted on validation (calibrate)", calibrated, reference))
        plain, _ = _timed(lambda: tuner.write_report(data.validation, insight=False))
        rows.append(("report (plots, matrix, model.keras, samples)", plain, reference))
        insightful, _ = _timed(lambda: tuner.write_report(data.validation))
        rows.append(
            ("report with insight (+ top losses, Grad-CAM, calibration)", insightful, reference)
        )
        seconds, _ = _timed(
            lambda: kerastl.export.saved_model(
                model, os.path.join(scratch, "sm"), samples=data.validation
            )
        )
        rows.append(("SavedModel export (8 parity samples)", seconds, None))

    print(f"machine: {machine()}; TF {tf.__version__}")
    print("| part | seconds | predict on the same images (s) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds, reference in rows:
        ratio = f"{seconds / reference:.2f}" if reference else "-"
        shown = f"{reference:.1f}" if reference else "-"
        print(f"| {name} | {seconds:.1f} | {shown} | {ratio} |")
    total = sum(row[1] for row in rows if "insight" not in row[0])
    predicted = rows[0][2] + rows[1][2]
    print(f"| whole phase | {total:.1f} | {predicted:.1f} | {total / predicted:.2f} |")
    training = _training_seconds(args.run_dir)
    added = calibrated + insightful - plain
    print(
        f"\ncalibration + insight add {added:.1f}s to the phase: "
        f"{100 * added / training:.1f}% of the run's {training:.0f}s of training"
    )


def _training_seconds(run_dir: str) -> float:
    """The sum of the `seconds` column of the run's stage table (`report.md`)."""
    with open(os.path.join(run_dir, "report.md")) as file:
        stages = file.read().split("## Stages")[1].split("\n## ")[0]
    rows = [line.split("|")[1:-1] for line in stages.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0]]
    column = header.index("seconds")
    return sum(float(row[column]) for row in rows[1:] if row[column].strip()[:1].isdigit())


if __name__ == "__main__":
    main()
