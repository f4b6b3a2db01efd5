"""PNG figures of a run: learning curves with stage boundaries, confusion matrix."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def new_figure(figsize: tuple[float, float]):
    """A `matplotlib.figure.Figure` outside pyplot: saving it needs no backend, and
    the user's pyplot backend and open figures (a notebook's) are left alone.

    Args:
        figsize: width and height in inches.

    Returns:
        The figure; `figure.savefig(path)` writes it.

    Example:
        >>> figure = new_figure((6, 4)); axis = figure.subplots()
    """
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def plot_learning_curves(
    history: dict[str, list[float]],
    stage_starts: Sequence[int],
    stage_names: Sequence[str],
    path: str | os.PathLike,
    *,
    monitor: str | None = None,
    best_epoch: int | None = None,
    stage_bests: Sequence[tuple[str, float, int]] = (),
) -> str:
    """Loss and each metric per epoch (train and validation), stages marked.

    Args:
        history: Keras `History.history` (`loss`, `val_loss`, metrics...).
        stage_starts: the first epoch of each stage.
        stage_names: a label per stage.
        path: the PNG to write.
        monitor: the logged value that picked the best epoch: its panel marks
            each stage's best epoch (open circles) and the run's (a star: the
            model that was restored and exported).
        best_epoch: the run's best epoch (from 1).
        stage_bests: `(stage, value, epoch)` per stage (`RunRecorder.best_per_stage`).

    Returns:
        `path` as a string.

    Example:
        >>> plot_learning_curves(history.history, [0, 3], ["head", "block6"], "curves.png")
    """
    names = [key for key in history if not key.startswith("val_") and key != "learning_rate"]
    figure = new_figure((5 * len(names), 3.6))
    axes = figure.subplots(1, len(names), squeeze=False)
    epochs = np.arange(1, len(history[names[0]]) + 1)
    for axis, name in zip(axes[0], names, strict=True):
        axis.plot(epochs, history[name], marker=".", label="train")
        if f"val_{name}" in history:
            axis.plot(epochs, history[f"val_{name}"], marker=".", label="validation")
        for start, label in zip(stage_starts, stage_names, strict=True):
            axis.axvline(start + 0.5, color="grey", linestyle="--", linewidth=0.8)
            axis.annotate(
                label,
                (start + 0.55, 1.0),
                xycoords=("data", "axes fraction"),
                va="top",
                fontsize=8,
                color="grey",
            )
        if monitor in (name, f"val_{name}"):
            _mark_bests(axis, history[monitor], best_epoch, stage_bests)
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return os.fspath(path)


def _mark_bests(axis, values, best_epoch, stage_bests) -> None:
    for _, value, epoch in stage_bests:
        axis.plot(epoch, value, "o", markersize=10, markerfacecolor="none", color="black")
    if best_epoch is not None and 1 <= best_epoch <= len(values):
        axis.plot(
            best_epoch, values[best_epoch - 1], "*", markersize=14, color="gold",
            markeredgecolor="black", label=f"best epoch {best_epoch} (kept)",
        )  # fmt: skip


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike
) -> str:
    """The confusion matrix (rows: true class, columns: predicted), with counts.

    Args:
        matrix: `[num_classes, num_classes]` counts.
        class_names: a name per class.
        path: the PNG to write.

    Returns:
        `path` as a string.

    Example:
        >>> plot_confusion_matrix(np.array([[50, 3], [7, 20]]), ["ok", "defect"], "cm.png")
    """
    size = max(3.5, 0.5 * len(class_names) + 2)
    figure = new_figure((size, size))
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > threshold else "black"
        axis.text(column, row, str(int(count)), ha="center", va="center", color=color)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return os.fspath(path)
