"""A fine-tuning run's directory: history, best checkpoint, plots and `report.md`.

Files are written as the run goes (nothing is lost if it stops): the CSV
history after every epoch, the best weights whenever the monitored value
improves, TensorBoard logs under `logs/`; the plots, the final model and
the report at the end.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

import keras
import numpy as np

from kerastl._atomic import write_atomically, write_text
from kerastl._progress import Progress
from kerastl.training.inference import traced_inference

HISTORY = "history.csv"
BEST_WEIGHTS = "best.weights.h5"
CURVES = "learning_curves.png"
CONFUSION = "confusion_matrix.png"
REPORT = "report.md"
MODEL = "model.keras"
SAMPLES = "samples.npz"
CONFIG = "config.yaml"


def new_run_directory(output_dir: str | os.PathLike, name: str) -> str:
    """Creates `output_dir/name`, or `name-2`, `name-3`... : an earlier run is never overwritten.

    Args:
        output_dir: where runs go.
        name: the run's name.

    Returns:
        The new (empty) directory's path.

    Example:
        >>> new_run_directory("runs", "elpv-lite0")
        'runs/elpv-lite0-2'
    """
    base = os.path.join(os.fspath(output_dir), name)
    path, number = base, 1
    while os.path.exists(path) and os.listdir(path):
        number += 1
        path = f"{base}-{number}"
    os.makedirs(path, exist_ok=True)
    return path


class RunRecorder(keras.callbacks.Callback):
    """Records every epoch of every stage and keeps the best weights.

    The callback is given the full model: in cached stages Keras trains a
    smaller model that shares its layers, and the checkpoint must be the
    whole model's.

    Args:
        model: the model whose weights are checkpointed and restored.
        directory: where `history.csv` and `best.weights.h5` go (None: nowhere).
        monitor: the logged value that picks the best epoch.
    """

    def __init__(self, model: keras.Model, directory: str | None, monitor: str):
        super().__init__()
        self.full_model = model
        self.directory = directory
        self.monitor = monitor
        self.lower_is_better = monitor.endswith("loss")
        self.rows: list[dict] = []
        self.stage = ""
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._best_weights: list | None = None

    def on_epoch_end(self, epoch, logs=None):
        logs = {key: float(value) for key, value in (logs or {}).items()}
        self.rows.append({"epoch": epoch + 1, "stage": self.stage, **logs})
        if self.directory:
            _write_history(self.rows, os.path.join(self.directory, HISTORY))
        value = logs.get(self.monitor)
        if value is None or not np.isfinite(value):
            return
        if self.best is None or (value < self.best if self.lower_is_better else value > self.best):
            self.best, self.best_epoch = value, epoch + 1
            self._best_weights = [np.array(w) for w in self.full_model.weights]
            if self.directory:
                path = os.path.join(self.directory, BEST_WEIGHTS)
                write_atomically(path, self.full_model.save_weights)

    def restore(self, rows: list[dict], best, best_epoch, best_weights) -> None:
        """Continues a backed-up run's record: its rows (rewritten to
        `history.csv`), best value and epoch, and the best weights (or None).

        Example:
            >>> recorder.restore(state["history"], 0.87, 12, best_weights)
        """
        self.rows = [dict(row) for row in rows]
        self.best, self.best_epoch, self._best_weights = best, best_epoch, best_weights
        if self.directory:
            _write_history(self.rows, os.path.join(self.directory, HISTORY))

    def weights_added(self, before: list) -> None:
        """The model gained weights (LoRA adapters) since `before` (its weights
        then): the best weights kept so far get zeros for them (zero adapters
        compute what the model computed at the best epoch)."""
        if self._best_weights is None:
            return
        kept = dict(zip(map(id, before), self._best_weights, strict=True))
        self._best_weights = [
            kept[id(variable)] if id(variable) in kept else np.zeros(variable.shape, variable.dtype)
            for variable in self.full_model.weights
        ]

    @property
    def best_weights(self) -> list | None:
        """The best epoch's weight values so far (None before one is seen)."""
        return self._best_weights

    def best_per_stage(self) -> list[tuple[str, float, int]]:
        """`(stage, best monitored value, its epoch)` for each stage that logged it.

        Example:
            >>> tuner.recorder.best_per_stage()
            [('1:head', 0.8357, 6), ('2:all', 0.8712, 12)]
        """
        best: dict[str, tuple[float, int]] = {}
        for row in self.rows:
            value = row.get(self.monitor)
            if value is None or not np.isfinite(value):
                continue
            kept = best.get(row["stage"])
            better = kept is None or (value < kept[0] if self.lower_is_better else value > kept[0])
            if better:
                best[row["stage"]] = (value, row["epoch"])
        return [(stage, value, epoch) for stage, (value, epoch) in best.items()]

    def stage_gains(self) -> str:
        """One line: each stage's best monitored value, and the last stage's gain
        over the first (the fine-tuning stages over the probe).

        Example:
            >>> print(tuner.recorder.stage_gains())
            1:head 0.8357 (epoch 6), 2:all 0.8712 (epoch 12); last stage vs first: +0.0355
        """
        per_stage = self.best_per_stage()
        line = ", ".join(
            f"{stage} {value:.4f} (epoch {epoch})" for stage, value, epoch in per_stage
        )
        if len(per_stage) > 1:
            line += f"; last stage vs first: {per_stage[-1][1] - per_stage[0][1]:+.4f}"
        return line

    def restore_best(self) -> bool:
        """Puts the best epoch's weights back into the model; False if none was seen."""
        if self._best_weights is None:
            return False
        for variable, value in zip(self.full_model.weights, self._best_weights, strict=True):
            variable.assign(value)
        return True


def _write_history(rows: list[dict], path: str) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def confusion_matrix(
    model: keras.Model, dataset, num_classes: int, *, verbose: int | str = 0
) -> np.ndarray:
    """Counts of (true class, predicted class) over a labelled dataset.

    Args:
        model: a classifier producing logits or probabilities.
        dataset: batches of `(inputs, labels)`.
        num_classes: the number of classes.
        verbose: progress (`kerastl._progress.resolve_verbose`); 0 silent.

    Returns:
        An integer `[num_classes, num_classes]` matrix, rows the true class.

    Example:
        >>> confusion_matrix(model, val_ds, 2)
        array([[440,  11], [ 38, 167]])
    """
    import tensorflow as tf

    matrix = np.zeros((num_classes, num_classes), np.int64)
    # A traced call of the model, not `predict`: under a multi-worker strategy
    # `predict` returns the global batch's outputs, which do not line up with
    # these labels; an eager call runs layer by layer (1.6x `predict`'s time).
    run = traced_inference(model, dataset.element_spec[0])
    progress = Progress("validation confusion matrix", int(dataset.cardinality()), verbose)
    for step, batch in enumerate(dataset.prefetch(tf.data.AUTOTUNE), start=1):
        logits = keras.tree.flatten(run(batch[0]))[0]
        predicted = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1)
        np.add.at(matrix, (np.asarray(batch[1]).reshape(-1), predicted), 1)
        progress.update(step)
    progress.finish()
    return matrix


def accuracy(matrix: np.ndarray) -> float:
    """Correct predictions over all of them (0 for an empty matrix)."""
    return float(np.trace(matrix) / max(int(matrix.sum()), 1))


def balanced_accuracy(matrix: np.ndarray) -> float:
    """Mean recall over the classes that occur (rows with a non-zero count)."""
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def write_report(
    directory: str,
    *,
    title: str,
    stages: Sequence[dict],
    recorder: RunRecorder,
    matrix: np.ndarray | None,
    class_names: Sequence[str] | None,
    extra_sections: Sequence[str] = (),
) -> str:
    """Writes `report.md`: stages, best epoch, final validation scores, figures.

    Args:
        directory: the run directory.
        title: the report's heading.
        stages: one dict per stage (`stage`, `epochs`, `seconds`, `cached`, ...).
        recorder: the run's `RunRecorder`.
        matrix: the validation confusion matrix, or None.
        class_names: class names for the matrix.
        extra_sections: further Markdown sections (data report, transfer report).

    Returns:
        The report's path.
    """
    lines = [f"# {title}", "", "## Stages", ""]
    columns = list(stages[0]) if stages else []
    lines += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in stages]
    lines += ["", "## Result", ""]
    if recorder.best_epoch is not None:
        best = f"{recorder.monitor} = {recorder.best:.4f}"
        lines.append(f"- best epoch: {recorder.best_epoch} ({best})")
        lines.append(f"- best per stage: {recorder.stage_gains()}")
    if recorder.rows:
        final = {k: v for k, v in recorder.rows[-1].items() if k.startswith("val_")}
        lines.append("- last epoch: " + ", ".join(f"{k} = {v:.4f}" for k, v in final.items()))
    if matrix is not None:
        names = list(class_names or range(len(matrix)))
        lines += [
            f"- validation balanced accuracy (model as saved): {balanced_accuracy(matrix):.4f}",
            f"- validation accuracy (model as saved): {accuracy(matrix):.4f}",
            "",
            "Confusion matrix (rows: true, columns: predicted):",
            "",
            *matrix_table(matrix, names),
        ]
    lines += ["", "## Files", ""]
    for name, what in (
        (HISTORY, "every epoch's logs, with its stage"),
        (CURVES, "loss and metrics per epoch, stage boundaries dashed, best epochs marked"),
        (CONFUSION, "validation confusion matrix"),
        (BEST_WEIGHTS, "weights of the best epoch"),
        (MODEL, "the final model (best epoch), `keras.models.load_model`"),
        (SAMPLES, "a few validation inputs: `kerastl export` checks exports on them"),
        (CONFIG, "the fully resolved configuration"),
        ("logs/", "TensorBoard logs (`tensorboard --logdir logs`)"),
    ):
        if os.path.exists(os.path.join(directory, name)):
            lines.append(f"- `{name}`: {what}")
    for section in extra_sections:
        lines += ["", section]
    path = os.path.join(directory, REPORT)
    write_text(path, "\n".join(lines) + "\n")
    return path


def matrix_table(matrix: np.ndarray, names: Sequence) -> list[str]:
    """A confusion matrix as Markdown table lines (rows: true class)."""
    lines = ["| | " + " | ".join(map(str, names)) + " |", "|" + " --- |" * (len(names) + 1)]
    lines += [
        f"| {name} | " + " | ".join(str(int(c)) for c in row) + " |"
        for name, row in zip(names, matrix, strict=True)
    ]
    return lines


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def write_run_report(
    model: keras.Model,
    recorder: RunRecorder,
    stage_starts: Sequence[int],
    stages: Sequence[dict],
    validation=None,
    *,
    title: str = "Fine-tuning run",
    extra_sections: Sequence[str] = (),
    save_model: bool = True,
    insight: bool = True,
    verbose: int | str = 0,
) -> str:
    """Writes a finished run's plots, final model and `report.md` into its directory.

    Args:
        model: the trained `TransferModel`.
        recorder: the run's `RunRecorder` (its directory and history rows).
        stage_starts: each stage's first epoch.
        stages: one summary row per stage (`FineTuner.stage_summaries`).
        validation: the validation dataset, for the confusion matrix.
        title: the report's heading.
        extra_sections: further Markdown sections.
        save_model: also save the model as `model.keras`, and the first
            validation inputs as `samples.npz` (what `kerastl export` checks
            exports on).
        insight: look at what the model gets wrong on `validation`: per-class
            table, most-confused pairs, top losses, Grad-CAM (image models) and
            calibration (`kerastl.training.insight_report`).
        verbose: progress of the validation pass (`kerastl._progress`).

    Returns:
        The path of `report.md`.

    Example:
        >>> write_run_report(model, tuner.recorder, tuner.stage_starts, tuner.stage_summaries)
    """
    from kerastl.training.plots import plot_confusion_matrix, plot_learning_curves

    directory = recorder.directory
    history: dict[str, list[float]] = {}
    for row in recorder.rows:
        for key, value in row.items():
            if key not in ("epoch", "stage"):
                history.setdefault(key, []).append(value)
    if len({len(values) for values in history.values()}) == 1:
        plot_learning_curves(
            history,
            list(stage_starts),
            [summary["stage"] for summary in stages],
            os.path.join(directory, CURVES),
            monitor=recorder.monitor,
            best_epoch=recorder.best_epoch,
            stage_bests=recorder.best_per_stage(),
        )
    matrix = None
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    if validation is not None and model.task == "classification":
        prepared = model.prepare_data(validation)  # a text model's raw strings -> tokens
        if insight:
            from kerastl.training.insight_report import write_insight

            matrix, section = write_insight(model, prepared, directory, verbose=verbose)
            extra_sections = [section, *extra_sections]
        else:
            matrix = confusion_matrix(model, prepared, model.num_classes, verbose=verbose)
        plot_confusion_matrix(matrix, names, os.path.join(directory, CONFUSION))
    if save_model:
        model.save(os.path.join(directory, MODEL))
        if validation is not None:
            from kerastl.export.samples import model_samples, save_samples

            save_samples(os.path.join(directory, SAMPLES), model_samples(model, validation))
    return write_report(
        directory,
        title=title,
        stages=list(stages),
        recorder=recorder,
        matrix=matrix,
        class_names=names,
        extra_sections=tuple(extra_sections),
    )
