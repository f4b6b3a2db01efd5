"""The report's figures of what a model gets wrong: top losses, Grad-CAM, calibration.

Each reads a `kerastl.training.insight.Look` (one pass over the validation
data) and writes one PNG through `matplotlib.figure.Figure` (no pyplot, no
backend switch).
"""

from __future__ import annotations

import os

import keras
import numpy as np

from kerastl.training.calibration import ECE_BINS, reliability, softmax
from kerastl.training.insight import Example, Look
from kerastl.training.plots import new_figure

TOP_LOSSES_PNG = "top_losses.png"
GRADCAM_PNG = "gradcam.png"
CALIBRATION_PNG = "calibration.png"


def plot_top_losses(seen: Look, path: str | os.PathLike) -> str:
    """The highest-loss images in a grid, each titled true / predicted / probability.

    Args:
        seen: a `Look` at an image model's validation data.
        path: the PNG to write.

    Returns:
        `path` as a string.

    Example:
        >>> plot_top_losses(look(model, val_ds), "runs/a/top_losses.png")
    """
    examples = seen.top_losses
    figure, axes = _grid(len(examples))
    for axis, example in zip(axes, examples, strict=False):
        axis.imshow(_pixels(example.inputs))
        axis.set_title(_caption(seen, example), fontsize=9)
    figure.suptitle("Highest validation losses (true / predicted p)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return os.fspath(path)


def plot_gradcam(model: keras.Model, seen: Look, path: str | os.PathLike) -> str:
    """Grad-CAM of the predicted class over the top losses and a few right examples.

    Args:
        model: the image `TransferModel` the `Look` was taken with.
        seen: its `Look` at the validation data.
        path: the PNG to write.

    Returns:
        `path` as a string.

    Example:
        >>> plot_gradcam(model, look(model, val_ds), "runs/a/gradcam.png")
    """
    from kerastl.training.gradcam import MIN_MAP_SIZE, gradcam, last_spatial_group

    shown = {example.index for example in seen.top_losses[:4]}
    examples = seen.top_losses[:4] + [e for e in seen.right if e.index not in shown][:4]
    images = np.stack([np.asarray(example.inputs, np.float32) for example in examples])
    group = last_spatial_group(model, min_size=MIN_MAP_SIZE)
    maps = gradcam(model, images, group)
    figure, axes = _grid(len(examples))
    for axis, example, heat in zip(axes, examples, maps, strict=False):
        axis.imshow(_pixels(example.inputs))
        axis.imshow(heat, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
        wrong = "wrong" if example.label != example.predicted else "right"
        axis.set_title(f"{wrong}: {_caption(seen, example)}", fontsize=9)
    figure.suptitle(
        f"Grad-CAM of the predicted class at {group} (red: raises its score)", fontsize=11
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return os.fspath(path)


def plot_calibration(seen: Look, path: str | os.PathLike) -> str:
    """Reliability diagrams before and after the temperature, with the ECE of each.

    Args:
        seen: a `Look` at the validation data.
        path: the PNG to write.

    Returns:
        `path` as a string.

    Example:
        >>> plot_calibration(look(model, val_ds), "runs/a/calibration.png")
    """
    figure = new_figure((9, 4))
    axes = figure.subplots(1, 2)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    for axis, temperature, name in (
        (axes[0], 1.0, "raw softmax"),
        (axes[1], seen.temperature, f"temperature {seen.temperature:.3g}"),
    ):
        confidence, accuracy, counts = reliability(
            softmax(seen.logits / temperature), seen.labels, ECE_BINS
        )
        filled = counts > 0
        axis.bar(
            edges[:-1][filled], accuracy[filled], width=1 / ECE_BINS, align="edge",
            edgecolor="black", color="tab:blue", label="accuracy",
        )  # fmt: skip
        axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        axis.plot(confidence[filled], accuracy[filled], "o", color="tab:red", label="bin mean")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (top-1 probability)")
        axis.set_ylabel("accuracy")
        axis.set_title(f"{name}: ECE {seen.ece(temperature):.4f}", fontsize=10)
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return os.fspath(path)


def _grid(count: int):
    columns = min(4, max(count, 1))
    rows = max(1, -(-count // columns))
    figure = new_figure((3 * columns, 3.2 * rows))
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False)).reshape(-1)
    for axis in axes:
        axis.axis("off")
    return figure, list(axes)


def _caption(seen: Look, example: Example) -> str:
    names = seen.class_names
    return f"{names[example.label]} / {names[example.predicted]} {example.probability:.2f}"


def _pixels(image) -> np.ndarray:
    return np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
