"""LoRA stages: which layers a `Stage(rank=...)` adapts, checked before training.

A stage with a `rank` trains LoRA adapters (`kerastl.peft`) on the target
layers of the groups it trains, and the head fully; everything else is
frozen. `train="lora"` (or `"all"`) means every backbone group, a group name
that group and every backbone group after it. Adapters stay in the model
after the stage: a later stage continues them (a group holding adapters
trains only them, whatever the stage), and exports merge them.

`kerastl.training.stage_plan` resolves each stage's targets once
(`stage_targets`); the functions that change the model take those layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import keras

from kerastl._internals import sublayers
from kerastl.groups import COARSE, FINE, HEAD, LayerGroups
from kerastl.peft import adapted_layers, enable_adapters, lora_targets, train_adapters
from kerastl.training.stage import ALL, LORA, Stage


def stage_groups(model: keras.Model, train: str, granularity: str) -> list[str]:
    """The backbone groups a LoRA stage adapts: all for `all`/`lora`, else from `train` on.

    Example:
        >>> stage_groups(model, "block6", "coarse")
        ['block6', 'block7', 'top_conv']
    """
    if train in (ALL, LORA):
        return [name for name in LayerGroups.of(model).names(COARSE) if name != HEAD]
    names = LayerGroups.of(model).names(granularity)
    return [name for name in names[names.index(train) :] if name != HEAD]


def stage_targets(model: keras.Model, stage: Stage) -> list[keras.layers.Layer]:
    """The layers `stage` adapts (raises as `kerastl.lora` does for bad targets)."""
    granularity = (
        COARSE if stage.train in (ALL, LORA) else LayerGroups.of(model).granularity_of(stage.train)
    )
    return lora_targets(model, stage_groups(model, stage.train, granularity), stage.lora_targets)


def first_adapted_group(model: keras.Model, targets: Sequence[keras.layers.Layer]) -> str:
    """The first fine group holding one of `targets` (the feature cache cuts
    below it: every group under it is frozen in the stage)."""
    wanted = {id(layer) for layer in targets}
    for name, layers in LayerGroups.of(model)[FINE].items():
        if any(id(sub) in wanted for layer in layers for sub in sublayers(layer)):
            return name
    raise AssertionError("stage_targets returned layers outside every group")


def add_adapters(
    model: keras.Model, targets: Sequence[keras.layers.Layer], rank: int, alpha: float | None
) -> None:
    """Gives each of `targets` adapters of `rank` and `alpha` where it has none yet
    (a resumed run's model needs them before its backed-up weights load)."""
    for layer in targets:
        if not getattr(layer, "lora_enabled", False):
            enable_adapters(layer, rank, alpha)
    LayerGroups.of(model).forget_variables()


def train_stage_adapters(
    model: keras.Model, targets: Sequence[keras.layers.Layer], rank: int, alpha: float | None
) -> None:
    """Adds the adapters `targets` lack and trains only the adapters (and the head).
    Layers adapted earlier with the same rank and alpha keep theirs."""
    add_adapters(model, targets, rank, alpha)
    train_adapters(model, list(targets), recompile=False)


def check_lora_stages(
    model: keras.Model, stages: Iterable[tuple[int, Stage, Sequence[keras.layers.Layer]]]
) -> None:
    """Refuses, before any training, LoRA stages that would give a layer adapters
    of another rank or alpha than it has (from the model or an earlier stage).

    Args:
        model: the model the stages train.
        stages: `(number, stage, its target layers)` for each LoRA stage, in order.

    Raises:
        ValueError: the stage number, layer and both settings named.
    """
    planned = {
        id(layer): (layer.lora_rank, float(layer.lora_alpha), "the model")
        for layer in adapted_layers(model)
    }
    for number, stage, targets in stages:
        alpha = float(stage.lora_alpha if stage.lora_alpha is not None else stage.rank)
        for layer in targets:
            rank_alpha = (stage.rank, alpha)
            kept = planned.setdefault(id(layer), (*rank_alpha, f"stage {number}"))
            if kept[:2] != rank_alpha:
                raise ValueError(
                    f"Stage {number} gives {layer.name!r} LoRA rank {stage.rank} (alpha "
                    f"{alpha:g}), but {kept[2]} gave it rank {kept[0]} (alpha {kept[1]:g}); a "
                    "layer keeps one set of adapters. Use the same rank and alpha, or merge "
                    "first (`kerastl.merge_lora`)."
                )
