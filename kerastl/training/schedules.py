"""Learning-rate schedules per group, as serializable Keras `LearningRateSchedule`s.

`discriminative_optimizer(schedule=...)` takes a factory from peak rate to
schedule: `warmup_cosine(...)` (Keras's own `CosineDecay` with its linear
warmup) or `one_cycle(...)` (`OneCycle`, below).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule


def warmup_cosine(
    total_steps: int, warmup_steps: int = 0, alpha: float = 0.0
) -> Callable[[float], LearningRateSchedule]:
    """Factory: linear warmup from 0 to the peak, then cosine decay to `alpha * peak`.

    Args:
        total_steps: warmup plus decay steps.
        warmup_steps: steps of linear warmup.
        alpha: final rate as a fraction of the peak.

    Returns:
        A function from a peak rate to Keras's `CosineDecay` schedule.

    Example:
        >>> kerastl.discriminative_optimizer(model, 1e-3, schedule=warmup_cosine(1000, 100))
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            "`warmup_steps` must be in [0, total_steps). Received: "
            f"warmup_steps={warmup_steps}, total_steps={total_steps}."
        )

    def make(peak: float) -> LearningRateSchedule:
        if warmup_steps == 0:
            return keras.optimizers.schedules.CosineDecay(peak, total_steps, alpha=alpha)
        return keras.optimizers.schedules.CosineDecay(
            0.0,
            total_steps - warmup_steps,
            alpha=alpha,
            warmup_target=peak,
            warmup_steps=warmup_steps,
        )

    return make


def one_cycle(
    total_steps: int,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Callable[[float], LearningRateSchedule]:
    """Factory: `OneCycle` schedules with these settings and a given peak.

    Example:
        >>> kerastl.discriminative_optimizer(model, 1e-3, schedule=one_cycle(1000))
    """
    OneCycle(1.0, total_steps, pct_start, div_factor, final_div_factor)  # validates now

    def make(peak: float) -> LearningRateSchedule:
        return OneCycle(peak, total_steps, pct_start, div_factor, final_div_factor)

    return make


@keras.saving.register_keras_serializable(package="kerastl")
class OneCycle(LearningRateSchedule):
    """The one-cycle policy: cosine rise from `max_lr / div_factor` to `max_lr`
    over `pct_start` of the steps, then cosine fall to
    `max_lr / (div_factor * final_div_factor)`.

    Args:
        max_lr: the peak rate.
        total_steps: the cycle's length; later steps stay at the final rate.
        pct_start: fraction of the steps spent rising, in (0, 1).
        div_factor: `max_lr / initial rate`.
        final_div_factor: `initial rate / final rate`.

    Example:
        >>> schedule = OneCycle(1e-3, total_steps=1000)
        >>> float(schedule(250))  # the peak
        0.001
    """

    def __init__(self, max_lr, total_steps, pct_start=0.25, div_factor=25.0, final_div_factor=1e4):
        if not 0 < pct_start < 1 or total_steps < 2 or max_lr <= 0:
            raise ValueError(
                "OneCycle needs max_lr > 0, total_steps >= 2 and 0 < pct_start < 1. Received: "
                f"max_lr={max_lr}, total_steps={total_steps}, pct_start={pct_start}."
            )
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)

    def __call__(self, step):
        step = keras.ops.minimum(keras.ops.cast(step, "float32"), self.total_steps - 1.0)
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        rise_steps = max(1.0, math.floor(self.pct_start * self.total_steps) - 1.0)
        fall_steps = max(1.0, self.total_steps - 1.0 - rise_steps)

        def anneal(start, end, fraction):
            return end + (start - end) / 2.0 * (1.0 + keras.ops.cos(math.pi * fraction))

        rising = anneal(initial, self.max_lr, keras.ops.minimum(step / rise_steps, 1.0))
        falling = anneal(
            self.max_lr, final, keras.ops.clip((step - rise_steps) / fall_steps, 0.0, 1.0)
        )
        return keras.ops.where(step <= rise_steps, rising, falling)

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
        }
