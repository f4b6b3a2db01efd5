"""`kerastl explain RUN_DIR IMAGE...`: a run's model on your images, and where it looked."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def explain(
    run_dir: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    output: str | os.PathLike | None = None,
    group: str | None = None,
    top: int = 3,
) -> list[str]:
    """Classifies `images` with a run's model and writes a Grad-CAM overlay of each.

    Args:
        run_dir: a finished run directory (its `model.keras`).
        images: image files (JPEG, PNG, GIF, BMP), resized to the model's input.
        output: where the overlays go (default `RUN_DIR/explain/`), one
            `<image name>.png` each.
        group: the layer group Grad-CAM explains (default: the last one whose
            feature map is at least 7 x 7, as in the run report's `gradcam.png`).
        top: classes listed per image.

    Returns:
        One line per image: its top classes with their (calibrated)
        probabilities, and the overlay's path.

    Raises:
        FileNotFoundError: no `model.keras` in `run_dir`, or an image missing.
        ValueError: the run's model is not an image classifier.

    Example:
        >>> for line in explain("runs/elpv-lite0", ["cell.png"]):
        ...     print(line)
        cell.png: defective 0.91, functional 0.09 -> runs/elpv-lite0/explain/cell.png
    """
    from kerastl.preprocessing import load_image
    from kerastl.saving import load_model
    from kerastl.training.evaluation import predict_probabilities
    from kerastl.training.gradcam import MIN_MAP_SIZE, gradcam, last_spatial_group
    from kerastl.training.run_directory import MODEL

    missing = [os.fspath(image) for image in images if not os.path.isfile(image)]
    if missing or not images:
        raise FileNotFoundError(f"Images not found (give image files). Received: {missing}.")
    path = os.path.join(os.fspath(run_dir), MODEL)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(run_dir)!r} is not a finished run: it has no {MODEL}.")
    model = load_model(path, compile=False)
    if getattr(model, "modality", None) != "image" or model.task != "classification":
        raise ValueError(
            f"`kerastl explain` shows where an image classifier looks; the model in "
            f"{os.fspath(run_dir)!r} is a {model.modality} {model.task} model."
        )
    size = tuple(model.input_shape[1:3])
    pixels = np.stack([load_image(i, size, crop_fraction=1.0, antialias=True) for i in images])
    probabilities = predict_probabilities(model, pixels)
    group = group or last_spatial_group(model, MIN_MAP_SIZE)
    maps = gradcam(model, pixels, group)
    output = os.fspath(output or os.path.join(os.fspath(run_dir), "explain"))
    os.makedirs(output, exist_ok=True)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    lines, taken = [], set()
    for image, picture, heat, row in zip(images, pixels, maps, probabilities, strict=True):
        ranked = np.argsort(-row)[:top]
        classes = ", ".join(f"{names[i]} {row[i]:.2f}" for i in ranked)
        target = os.path.join(output, f"{_unique_stem(os.fspath(image), taken)}.png")
        title = f"{os.path.basename(os.fspath(image))}: {classes}"
        _overlay(picture, heat, title, f"Grad-CAM of the top class at {group}", target)
        lines.append(f"{os.fspath(image)}: {classes} -> {target}")
    return lines


def _unique_stem(image: str, taken: set) -> str:
    """The image's name without extension; with its folder's in front when two
    images share a name (`circle-3`, `square-3`)."""
    stem = os.path.splitext(os.path.basename(image))[0]
    if stem in taken:
        folder = os.path.basename(os.path.dirname(os.path.abspath(image)))
        stem = f"{folder}-{stem}"
    while stem in taken:
        stem += "_"
    taken.add(stem)
    return stem


def _overlay(picture: np.ndarray, heat: np.ndarray, title: str, caption: str, path: str) -> None:
    from kerastl.training.plots import new_figure

    figure = new_figure((7, 3.8))
    left, right = figure.subplots(1, 2)
    for axis in (left, right):
        axis.imshow(np.clip(picture, 0, 255).astype(np.uint8))
        axis.axis("off")
    right.imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    right.set_title(caption, fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
