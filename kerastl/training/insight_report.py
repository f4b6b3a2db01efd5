"""The run report's look at the mistakes: one validation pass, its tables and figures.

`write_insight` is what `write_run_report` calls (`insight=True`, the
default): it reads the validation data once (`kerastl.training.insight.look`),
draws `top_losses.png` and `gradcam.png` for an image model and
`calibration.png` for every classifier, and returns the confusion matrix
with the report's section. The time it took is in the section and, with
`verbose`, on the console.
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np

from kerastl.training.insight import look, markdown
from kerastl.training.insight_plots import (
    CALIBRATION_PNG,
    GRADCAM_PNG,
    TOP_LOSSES_PNG,
    plot_calibration,
    plot_gradcam,
    plot_top_losses,
)

FIGURES = {
    TOP_LOSSES_PNG: "the validation examples with the highest loss",
    GRADCAM_PNG: "Grad-CAM of the predicted class over the top losses and right examples",
    CALIBRATION_PNG: "reliability diagrams and ECE, raw softmax and at the model's temperature",
}


def write_insight(
    model: keras.Model, validation, directory: str, *, verbose: int | str = 0
) -> tuple[np.ndarray, str]:
    """Looks at `model`'s mistakes on `validation` and writes the figures into `directory`.

    Args:
        model: a trained single-label `TransferModel`.
        validation: its validation batches (prepared: `model.prepare_data`).
        directory: the run directory.
        verbose: progress and the time taken (`kerastl._progress`).

    Returns:
        `(confusion matrix, the report's Markdown section)`.

    Example:
        >>> matrix, section = write_insight(model, val_ds, "runs/a")
    """
    started = time.perf_counter()
    seen = look(model, validation, verbose=verbose)
    written = [plot_calibration(seen, os.path.join(directory, CALIBRATION_PNG))]
    if getattr(model, "modality", "image") == "image":
        written.append(plot_top_losses(seen, os.path.join(directory, TOP_LOSSES_PNG)))
        try:
            written.append(plot_gradcam(model, seen, os.path.join(directory, GRADCAM_PNG)))
        except ValueError as reason:  # a backbone without a spatial feature map (ViT)
            if verbose:
                print(f"kerastl: no gradcam.png: {reason}")
    seconds = time.perf_counter() - started
    if verbose:
        print(f"kerastl: report: top losses, Grad-CAM and calibration in {seconds:.1f}s.")
    files = [f"- `{os.path.basename(path)}`: {FIGURES[os.path.basename(path)]}" for path in written]
    section = "\n".join([markdown(seen), "", *files, "", f"(This look took {seconds:.1f}s.)"])
    return seen.matrix, section
