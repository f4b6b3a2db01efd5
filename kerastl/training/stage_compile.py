"""What a `Stage` compiles with: its optimizer (one rate or one per group) and loss."""

from __future__ import annotations

import keras

from kerastl.fused_adam import FusedAdam, FusedAdamW
from kerastl.optimizers import discriminative_optimizer
from kerastl.training.losses import SparseSmoothedCrossentropy
from kerastl.training.schedules import warmup_cosine
from kerastl.training.stage import HEAD, Stage


def stage_optimizer(stage: Stage, model: keras.Model, steps: int) -> keras.optimizers.Optimizer:
    """The stage's optimizer: one rate, or one per group (`lr_mult`, `lr_decay`).

    Args:
        stage: the `Stage`.
        model: the `TransferModel` (its groups, for per-group rates).
        steps: the stage's training steps (for warm-up and cosine decay).

    Returns:
        A fresh, unbuilt optimizer (a `GroupOptimizer` for per-group rates).

    Raises:
        ValueError: a warm-up or cosine schedule over data of unknown length.

    Example:
        >>> stage_optimizer(Stage(5, train="all", lr=1e-3, lr_mult=10), model, 500)
    """
    schedule = None
    if stage.warmup or stage.schedule == "cosine":
        if steps <= 0:
            raise ValueError(
                "A warm-up or cosine schedule needs a training dataset of known length. "
                f"Received: cardinality {steps // stage.epochs}."
            )
        alpha = 1.0 if stage.schedule == "constant" else 0.0  # CosineDecay alpha=1: constant
        schedule = warmup_cosine(steps, int(stage.warmup * steps), alpha=alpha)
    grouped = stage.train != HEAD and bool(stage.lr_mult or stage.lr_decay)
    # A schedule is given at construction: assigning one later replaces a
    # tracked variable, and the model can then no longer be exported.
    rate = schedule(stage.lr) if schedule is not None and not grouped else stage.lr
    options = {"weight_decay": stage.weight_decay} if stage.weight_decay else {}
    if stage.ema is not None:
        options.update(use_ema=True, ema_momentum=stage.ema)
    if stage.optimizer == "sgd":
        template = keras.optimizers.SGD(rate, momentum=0.9, **options)
    elif stage.optimizer == "adamw":
        template = FusedAdamW(rate, **{"weight_decay": 0.004, **options})
    else:
        template = FusedAdam(rate, **options)
    if grouped:
        return discriminative_optimizer(
            model,
            stage.lr,
            lr_mult=stage.lr_mult,
            decay=stage.lr_decay,
            optimizer=template,
            schedule=schedule,
        )
    return template


def stage_loss(stage: Stage) -> keras.losses.Loss:
    """Cross-entropy on logits, label-smoothed if `label_smoothing`: sparse, or
    on soft labels when the stage mixes images.

    Args:
        stage: the `Stage`.

    Returns:
        A Keras loss.

    Example:
        >>> stage_loss(Stage(3, label_smoothing=0.1))
        <SparseSmoothedCrossentropy ...>
    """
    if stage.mixing:
        return keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=stage.label_smoothing
        )
    if stage.label_smoothing:
        return SparseSmoothedCrossentropy(stage.label_smoothing, from_logits=True)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
