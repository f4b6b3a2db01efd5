"""Running `.tflite` files in LiteRT's interpreter (`ai-edge-litert`)."""

from __future__ import annotations

import os

import numpy as np


def run_litert(path: str, images, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Runs a `.tflite` file from `litert` in LiteRT's interpreter.

    Args:
        path: the file.
        images: float32 `[n, H, W, 3]` pixels in [0, 255].
        batch_size: images per call.

    Returns:
        Output name → array over all `images`.

    Example:
        >>> run_litert("out/elpv.tflite", val_images[:4])["probabilities"].shape
        (4, 2)
    """
    return LiteRTRunner(path)(images, batch_size)


class LiteRTRunner:
    """One interpreter for a `.tflite` file, called on batches of images.

    The signature runner resizes the input to each batch's size as it comes.

    Args:
        path: the file.

    Example:
        >>> runner = LiteRTRunner("out/elpv.int8.tflite")
        >>> runner(val_images)["probabilities"].shape
        (393, 2)
    """

    def __init__(self, path: str):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
        self._runner = self._interpreter.get_signature_runner()

    def __call__(self, images, batch_size: int = 32) -> dict[str, np.ndarray]:
        images = np.asarray(images, np.float32)
        chunks = [
            self._runner(images=images[start : start + batch_size])
            for start in range(0, len(images), batch_size)
        ]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
