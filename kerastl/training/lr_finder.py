"""`lr_find`: the learning-rate range test, leaving the model as it found it."""

from __future__ import annotations

import dataclasses
import math
import os

import keras
import numpy as np


@dataclasses.dataclass(frozen=True)
class LRFindResult:
    """The range test's curve and suggestion.

    Args:
        learning_rates: the rate of each step.
        losses: the raw training loss of each step.
        smoothed: the exponentially smoothed, bias-corrected loss.
        suggestion: the suggested learning rate (inside the scanned range).
        method: `"steepest"` or `"valley"`.
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    method: str

    def plot(self, path: str | os.PathLike) -> str:
        """Saves the curve (loss against log learning rate) as a PNG; returns its path."""
        from kerastl.training.plots import new_figure

        figure = new_figure((6, 4))
        axis = figure.subplots()
        axis.plot(self.learning_rates, self.losses, alpha=0.3, label="loss")
        axis.plot(self.learning_rates, self.smoothed, label="smoothed")
        axis.axvline(
            self.suggestion,
            color="red",
            linestyle="--",
            label=f"{self.method}: {self.suggestion:.2e}",
        )
        axis.set_xscale("log")
        axis.set_xlabel("learning rate")
        axis.set_ylabel("training loss")
        axis.legend()
        figure.tight_layout()
        path = os.fspath(path)
        figure.savefig(path, dpi=100)
        return path


def lr_find(
    model: keras.Model,
    dataset,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    divergence: float = 4.0,
    method: str = "steepest",
    optimizer: keras.optimizers.Optimizer | None = None,
    plot_path: str | os.PathLike | None = None,
) -> LRFindResult:
    """Runs the LR range test: one step per rate, rates growing exponentially.

    The model must be compiled (its loss and metrics are used). The test
    trains a copy of the state with a temporary optimizer (`optimizer`, or
    Adam), every group at the same rate, and stops early once the smoothed
    loss exceeds `divergence` times its best. Afterwards the model's weights
    (BatchNorm statistics included), its optimizer object and that
    optimizer's state are exactly as before.

    Args:
        model: a compiled model.
        dataset: a `tf.data.Dataset` of `(x, y)` batches (repeated as needed).
        start_lr: first rate.
        end_lr: last rate.
        num_steps: steps at most (each one batch).
        smoothing: exponential smoothing factor of the loss, in [0, 1).
        divergence: stop when smoothed loss > `divergence` x best smoothed loss.
        method: `"steepest"` (steepest descent of the smoothed loss) or
            `"valley"` (a tenth of the rate at the minimum).
        optimizer: the temporary optimizer (unbuilt); default Adam.
        plot_path: also save the curve as a PNG there.

    Returns:
        An `LRFindResult`.

    Example:
        >>> result = kerastl.lr_find(model, train_ds, num_steps=50, plot_path="lr.png")
        >>> result.suggestion
    """
    if not getattr(model, "compiled", False):
        raise ValueError("`lr_find` needs a compiled model: call model.compile(...) first.")
    if not 0 < start_lr < end_lr:
        raise ValueError(
            f"Need 0 < start_lr < end_lr. Received: start_lr={start_lr}, end_lr={end_lr}."
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 5:
        raise ValueError(f"`num_steps` must be an integer >= 5. Received: num_steps={num_steps!r}.")
    if not 0 <= smoothing < 1:
        raise ValueError(f"`smoothing` must be in [0, 1). Received: smoothing={smoothing}.")
    if method not in ("steepest", "valley"):
        raise ValueError(f"`method` must be 'steepest' or 'valley'. Received: method={method!r}.")

    original_optimizer = model.optimizer
    compile_args = keras.saving.deserialize_keras_object(model.get_compile_config())
    weights = [np.array(v.numpy()) for v in model.weights]
    temporary = optimizer or keras.optimizers.Adam()
    rates = start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / (num_steps - 1))
    losses: list[float] = []
    smoothed: list[float] = []
    try:
        model.compile(**{**compile_args, "optimizer": temporary})
        average, best = 0.0, math.inf
        batches = iter(dataset.repeat())
        for step, rate in enumerate(rates):
            temporary.learning_rate.assign(rate)
            x, y = next(batches)[:2]
            loss = float(np.asarray(model.train_on_batch(x, y, return_dict=True)["loss"]))
            average = smoothing * average + (1 - smoothing) * loss
            value = average / (1 - smoothing ** (step + 1))
            losses.append(loss)
            smoothed.append(value)
            if not math.isfinite(value) or (step > 0 and value > divergence * best):
                break
            best = min(best, value)
    finally:
        model.compile(**{**compile_args, "optimizer": original_optimizer})
        for variable, value in zip(model.weights, weights, strict=True):
            variable.assign(value)

    scanned = rates[: len(losses)]
    result = LRFindResult(
        learning_rates=scanned,
        losses=np.array(losses),
        smoothed=np.array(smoothed),
        suggestion=_suggest(scanned, np.array(smoothed), method),
        method=method,
    )
    if plot_path is not None:
        result.plot(plot_path)
    return result


def _suggest(rates: np.ndarray, smoothed: np.ndarray, method: str) -> float:
    finite = np.isfinite(smoothed)
    rates, smoothed = rates[finite], smoothed[finite]
    if len(rates) < 3:
        return float(rates[0])
    if method == "valley":
        return float(max(rates[int(np.argmin(smoothed))] / 10, rates[0]))
    # Skip the first tenth of the curve, where the smoothing has not settled.
    skip = max(1, len(rates) // 10)
    slopes = np.gradient(smoothed[skip:], np.log(rates[skip:]))
    return float(rates[skip + int(np.argmin(slopes))])
