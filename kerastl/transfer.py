"""The transfer report: does the pretrained backbone help on this data?

Trains, with the same number of epochs as the configured stages, a linear
probe (pretrained backbone frozen, head only, on cached features) and the
same network from a random initialisation (everything trains), then puts
them beside the fine-tuned run: best validation value and wall time. A
fine-tuned model worse than the one trained from scratch is negative
transfer, and is reported loudly.
"""

from __future__ import annotations

import time
import warnings

from kerastl.finetune import ALL, HEAD, FineTuner, Stage


def compare(config, data, recorder, fine_tuned_seconds: float, *, verbose="auto") -> list[dict]:
    """Trains the probe and the from-scratch baseline; returns the three rows.

    Args:
        config: the run's `RunConfig`.
        data: the run's `Data` (the same batches).
        recorder: the fine-tuned run's `RunRecorder` (its best value).
        fine_tuned_seconds: the fine-tuned run's training time.
        verbose: Keras progress output.

    Returns:
        Rows `{"model", "best", "epoch", "seconds"}` for `scratch`,
        `linear probe` and `fine-tuned`, plus `"negative_transfer"` on the
        fine-tuned row.

    Example:
        >>> rows = compare(config, data, tuner.recorder, 120.0)
    """
    import keras

    from kerastl.run import build_model

    epochs = sum(stage.epochs for stage in config.stages)
    lr = config.stages[0].lr
    rows = []
    for label, weights, stage in (
        ("scratch", None, Stage(epochs, train=ALL, lr=lr)),
        ("linear probe", "config", Stage(epochs, train=HEAD, lr=lr)),
    ):
        print(f"kerastl: transfer report: training the {label} ({epochs} epochs) ...", flush=True)
        keras.utils.set_random_seed(config.train.seed)
        model = build_model(config, data.class_names, weights=weights)
        tuner = FineTuner(
            model,
            cache_features=config.train.cache_features,
            class_weight=config.train.class_weight,
            metrics=config.train.metrics,
            monitor=config.train.monitor,
            verbose=verbose,
        )
        started = time.perf_counter()
        tuner.fit(data.train, data.validation, stages=[stage])
        rows.append(_row(label, tuner.recorder, time.perf_counter() - started))
    rows.append(_row("fine-tuned", recorder, fine_tuned_seconds))
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


def _row(label: str, recorder, seconds: float) -> dict:
    return {
        "model": label,
        "best": recorder.best,
        "epoch": recorder.best_epoch,
        "seconds": round(seconds, 1),
    }


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
        f"| model | best {monitor} | at epoch | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        best = "n/a" if row["best"] is None else f"{row['best']:.4f}"
        lines.append(f"| {row['model']} | {best} | {row['epoch']} | {row['seconds']} |")
    if rows[-1].get("negative_transfer"):
        lines += ["", "**Negative transfer: fine-tuned is worse than from scratch.**"]
    return "\n".join(lines)
