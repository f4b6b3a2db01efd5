"""Run figures: PNGs written without touching the user's matplotlib state."""

from pathlib import Path

import matplotlib
import numpy as np

from kerastl.training.plots import plot_confusion_matrix, plot_learning_curves


def test_figures_are_written_without_switching_the_users_backend_or_figures(tmp_path):
    import matplotlib.pyplot as plt

    previous = matplotlib.get_backend()
    matplotlib.use("svg")  # stands for a notebook's inline backend
    try:
        users_figure = plt.figure()
        history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.5, 0.8]}
        curves = plot_learning_curves(history, [0, 1], ["1:head", "2:all"], tmp_path / "c.png")
        matrix = plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["a", "b"], tmp_path / "m.png")
        for path in (curves, matrix):
            assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == [users_figure.number]
    finally:
        plt.close("all")
        matplotlib.use(previous)
