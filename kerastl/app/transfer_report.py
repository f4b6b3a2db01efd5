"""The transfer report: does the pretrained backbone help on this data?

Trains, with the same number of epochs as the configured stages, a linear
probe (pretrained backbone frozen, head only, on cached features) and the
same network from a random initialisation, then puts them beside the
fine-tuned run: best validation value and wall time. A fine-tuned model
worse than the one trained from scratch is negative transfer, and is
reported loudly.

The from-scratch network trains everything, BatchNorm statistics included
(frozen statistics of a random network are mean 0, variance 1 and it cannot
learn), with its own recipe: Adam, a linear warm-up over the first 10% of
steps, then cosine decay, from `SCRATCH_LR` (1e-3 for images; 1e-4 for
text transformers, BERT's own pretraining rate).
"""

from __future__ import annotations

import time
import warnings

from kerastl.app.builders import build_model, build_tuner
from kerastl.backbones.spec import TEXT
from kerastl.distribute.strategies import is_chief
from kerastl.training.stage import ALL, HEAD, Stage

SCRATCH_LR = {"image": 1e-3, TEXT: 1e-4}
SCRATCH_WARMUP = 0.1


def scratch_stage(epochs: int, modality: str = "image") -> Stage:
    """The stage that trains the from-scratch baseline: everything, BatchNorm too.

    Args:
        epochs: the epochs (the fine-tuned run's total).
        modality: `"image"` or `"text"`: picks the peak rate (`SCRATCH_LR`).

    Returns:
        A `Stage` with `train="all"`, `train_bn=True`, warm-up and cosine decay.

    Example:
        >>> scratch_stage(10).train_bn
        True
    """
    return Stage(
        epochs,
        train=ALL,
        lr=SCRATCH_LR.get(modality, SCRATCH_LR["image"]),
        train_bn=True,
        warmup=SCRATCH_WARMUP,
        schedule="cosine",
    )


def compare(
    config, data, recorder, fine_tuned_seconds: float, *, strategy=None, verbose="auto", spec=None
) -> list[dict]:
    """Trains the probe and the from-scratch baseline; returns the three rows.

    Args:
        config: the run's `RunConfig`.
        data: the run's `Data` (the same batches).
        recorder: the fine-tuned run's `RunRecorder` (its best value).
        fine_tuned_seconds: the fine-tuned run's training time.
        strategy: the strategy the baselines train under (default: the current one).
        verbose: Keras progress output.
        spec: the backbone's spec when the caller has it (`resolve(config).spec`).

    Returns:
        Rows `{"model", "training", "best", "epoch", "seconds"}` for `scratch`,
        `linear probe` and `fine-tuned`, plus `"negative_transfer"` on the
        fine-tuned row.

    Example:
        >>> rows = compare(config, data, tuner.recorder, 120.0)
    """
    import keras
    import tensorflow as tf

    from kerastl.backbones.registry import get_spec

    spec = spec or get_spec(config.model.backbone)
    strategy = strategy or tf.distribute.get_strategy()
    epochs = sum(stage.epochs for stage in config.stages)
    lr = config.stages[0].lr
    modality = spec.modality
    rows = []
    for label, weights, stage in (
        ("scratch", None, scratch_stage(epochs, modality)),
        ("linear probe", "config", Stage(epochs, train=HEAD, lr=lr)),
    ):
        if is_chief(strategy):
            print(
                f"kerastl: transfer report: training the {label} ({epochs} epochs) ...", flush=True
            )
        keras.utils.set_random_seed(config.train.seed)
        with strategy.scope():
            model = build_model(config, data.class_names, weights=weights, spec=spec)
        tuner = build_tuner(config, model, strategy, augment=False, verbose=verbose)
        started = time.perf_counter()
        tuner.fit(data.train, data.validation, stages=[stage])
        rows.append(_row(label, tuner.recorder, time.perf_counter() - started, stage))
    rows.append(_row("fine-tuned", recorder, fine_tuned_seconds, None))
    lower_is_better = recorder.monitor.endswith("loss")
    scratch, tuned = rows[0]["best"], rows[-1]["best"]
    negative = None not in (scratch, tuned) and (
        tuned > scratch if lower_is_better else tuned < scratch
    )
    rows[-1]["negative_transfer"] = negative
    if negative:
        message = (
            f"NEGATIVE TRANSFER: the fine-tuned model ({recorder.monitor} = {tuned:.4f}) is worse "
            f"than the same network trained from scratch ({scratch:.4f}) with the same epochs."
        )
        warnings.warn(message, stacklevel=2)
        print(f"kerastl: {'!' * 20} {message}", flush=True)
    return rows


def _row(label: str, recorder, seconds: float, stage: Stage | None) -> dict:
    return {
        "model": label,
        "training": _describe_stage(stage),
        "best": recorder.best,
        "epoch": recorder.best_epoch,
        "seconds": round(seconds, 1),
    }


def _describe_stage(stage: Stage | None) -> str:
    if stage is None:
        return "the configured stages"
    what = "everything, BatchNorm statistics too" if stage.train_bn else stage.train
    schedule = f", {stage.warmup:.0%} warm-up, cosine" if stage.schedule == "cosine" else ""
    return f"{what}; {stage.optimizer} lr {stage.lr:g}{schedule}"


def markdown(rows: list[dict], monitor: str) -> str:
    """The transfer report as a Markdown section.

    Args:
        rows: `compare`'s rows.
        monitor: the compared value's name.

    Returns:
        Markdown text.
    """
    lines = [
        "## Transfer report",
        "",
        f"Same epochs for each; best `{monitor}` over the epochs.",
        "",
        f"| model | trains | best {monitor} | at epoch | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        best = "n/a" if row["best"] is None else f"{row['best']:.4f}"
        lines.append(
            f"| {row['model']} | {row['training']} | {best} | {row['epoch']} | {row['seconds']} |"
        )
    if rows[-1].get("negative_transfer"):
        lines += ["", "**Negative transfer: fine-tuned is worse than from scratch.**"]
    return "\n".join(lines)
