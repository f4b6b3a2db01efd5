"""`StagePlan`: every stage of a run resolved once, before training, without
touching the model.

A `Stage` is a settings record; what it means for one model is read here and
nowhere else: which groups and layers it trains (its `TrainTarget`: the
groups, their granularity, LoRA targets, the layers drop path may use), where
the model is cut for the feature cache and which lower cache a later stage
will read, or why the stage trains end to end. Everything is checked before
the first epoch (unknown groups, mixing on text, drop path where nothing
trained can drop, clashing LoRA ranks, a cut that cannot carry what the
upper layers need when caching is required), and the model's trainable
flags, layers and variables are what they were.

Freezing (`PlannedStage.set_trainable`), LoRA (`lora_stages`), drop path
and the feature store (`PlannedStage.split`, `.source`) take the plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import keras

from kerastl.freezing import freeze, freeze_to, unfreeze
from kerastl.groups import COARSE, FINE, LayerGroups
from kerastl.peft import adapter_groups
from kerastl.training.drop_path import check_drop_path, set_drop_path
from kerastl.training.feature_cache import CacheRefused, Split, split_model
from kerastl.training.lora_stages import (
    check_lora_stages,
    first_adapted_group,
    stage_targets,
    train_stage_adapters,
)
from kerastl.training.stage import ALL, HEAD, LORA, Stage

EVERY_LAYER = "it trains every layer"
CACHING_OFF = "caching is off"


@dataclasses.dataclass(frozen=True)
class TrainTarget:
    """What one stage trains on one model.

    Args:
        train: the stage's `train` (`head`, `all`, `lora` or a group name).
        granularity: the groups `train` names (`coarse` or `fine`).
        first: the lowest group that trains (`head`, `all` or a group name):
            the feature cache cuts below it.
        first_granularity: the groups `first` names.
        groups: the names of the groups that train (in `first_granularity`;
            a LoRA stage's: the fine groups holding its adapters, and `head`).
        layers: those groups' layers, in model order.
        adapted: the layers given LoRA adapters (empty without `rank`).
    """

    train: str
    granularity: str
    first: str
    first_granularity: str
    groups: tuple[str, ...]
    layers: tuple[keras.layers.Layer, ...] = dataclasses.field(repr=False)
    adapted: tuple[keras.layers.Layer, ...] = dataclasses.field(default=(), repr=False)


@dataclasses.dataclass(frozen=True)
class PlannedStage:
    """One stage as it will run.

    Args:
        number: its place in the run, from 1.
        stage: its settings.
        target: what it trains.
        resized: whether it trains at another image size than the model's.
        split: where the model is cut for its feature cache; None: it trains
            end to end.
        end_to_end: why it trains end to end (None when it is cached).
        source: a cut below `split` that a later stage caches at: its cache
            is made first and `split`'s features computed from it.
    """

    number: int
    stage: Stage
    target: TrainTarget
    resized: bool = False
    split: Split | None = dataclasses.field(default=None, repr=False)
    end_to_end: str | None = None
    source: Split | None = dataclasses.field(default=None, repr=False)

    @property
    def label(self) -> str:
        """`number:label`, as reports and logs name the stage (`2:block6`)."""
        return f"{self.number}:{self.stage.label}"

    def set_trainable(self, model: keras.Model) -> None:
        """Sets `model`'s trainable flags (and LoRA adapters) for this stage,
        without recompiling.

        Example:
            >>> plan[1].set_trainable(model)
        """
        stage, target = self.stage, self.target
        if stage.rank:
            train_stage_adapters(model, target.adapted, stage.rank, stage.lora_alpha)
        elif target.train == HEAD:
            freeze(model, train_bn=stage.train_bn, recompile=False)
        elif target.train == ALL:
            unfreeze(model, train_bn=stage.train_bn, recompile=False)
        else:
            freeze_to(
                model,
                target.train,
                train_bn=stage.train_bn,
                granularity=target.granularity,
                recompile=False,
            )

    def prepare(self, model: keras.Model) -> None:
        """Sets the trainable flags, head dropout and drop-path rates of this
        stage (no recompile); `drop_path.reset_drop_path(model)` after it.

        Example:
            >>> plan[0].prepare(model)
        """
        stage = self.stage
        model.dropout_layer.rate = model.dropout if stage.dropout is None else stage.dropout
        self.set_trainable(model)
        set_drop_path(model, stage.drop_path)


@dataclasses.dataclass(frozen=True)
class StagePlan(Sequence):
    """The run's stages, resolved (`plan_stages`); a sequence of `PlannedStage`.

    Args:
        stages: the planned stages, in order.
        caching: whether the run caches frozen features where it can.
    """

    stages: tuple[PlannedStage, ...]
    caching: bool = False

    def __getitem__(self, index):
        return self.stages[index]

    def __len__(self) -> int:
        return len(self.stages)

    def __iter__(self) -> Iterator[PlannedStage]:
        return iter(self.stages)

    @property
    def settings(self) -> list[Stage]:
        """The `Stage`s, in order."""
        return [planned.stage for planned in self.stages]


def plan_stages(
    model: keras.Model,
    stages: Sequence[Stage],
    validation=None,
    *,
    caching: bool = False,
    cache_required: bool = False,
) -> StagePlan:
    """Resolves and checks every stage against `model` before any of them runs;
    the model is left exactly as it was (flags, adapters, rates, variables).

    Args:
        model: the `TransferModel` the stages will train.
        stages: the `Stage`s, in order.
        validation: the validation data, or None (early stopping needs it).
        caching: cut the model for a feature cache where a stage's lower
            layers are frozen (and it does not mix or resize images).
        cache_required: a stage whose cut cannot carry what the upper layers
            need is an error instead of training end to end.

    Returns:
        A `StagePlan`.

    Raises:
        ValueError: a stage that cannot run on `model` (an unknown group,
            mixing on text, drop path where nothing trained can drop, a LoRA
            rank that clashes with an earlier one, ...), named.
        CacheRefused: with `cache_required`, a cut that cannot be made.

    Example:
        >>> plan = plan_stages(model, [Stage(2), Stage(3, train="block6", drop_path=0.1)])
        >>> [planned.target.first for planned in plan]
        ['head', 'block6']
    """
    stages = list(stages)
    if not stages or not all(isinstance(stage, Stage) for stage in stages):
        raise ValueError(
            f"`stages` must be a non-empty list of Stage. Received: stages={stages!r}."
        )
    if any(stage.patience for stage in stages) and validation is None:
        raise ValueError(
            "Early stopping (`patience`) needs validation data. Received: validation=None."
        )
    planned = [_checked(model, number, stage) for number, stage in enumerate(stages, start=1)]
    check_lora_stages(
        model, [(p.number, p.stage, p.target.adapted) for p in planned if p.stage.rank]
    )
    planned = _shared_cuts([_with_cut(model, p, caching, cache_required) for p in planned])
    planned = [
        dataclasses.replace(p, source=_lowest_later_cut(p.split, planned[p.number :]))
        if p.split is not None
        else p
        for p in planned
    ]
    return StagePlan(tuple(planned), caching=caching)


def resolve_target(model: keras.Model, stage: Stage) -> TrainTarget:
    """What `stage` trains on `model`, read off the resolved groups (the model
    is not changed).

    Args:
        model: a `TransferModel`.
        stage: the `Stage`.

    Returns:
        A `TrainTarget`.

    Raises:
        ValueError: `stage.train` names no group of the model, or its LoRA
            targets match no layer.

    Example:
        >>> resolve_target(model, Stage(1, train="block7")).groups
        ('block7', 'top_conv', 'head')
    """
    granularity = granularity_of(model, stage.train)
    groups = LayerGroups.of(model)
    if stage.rank:  # the groups `train_stage_adapters` then trains
        adapted = tuple(stage_targets(model, stage))
        names = adapter_groups(model, adapted)
        first, first_granularity = first_adapted_group(model, adapted), FINE
    else:
        adapted = ()
        ordered = list(groups[granularity])
        if stage.train == HEAD:
            names = [HEAD]
        elif stage.train == ALL:
            names = ordered
        else:
            names = ordered[ordered.index(stage.train) :]
        first, first_granularity = stage.train, granularity
    members = groups[FINE if stage.rank else granularity]
    return TrainTarget(
        train=stage.train,
        granularity=granularity,
        first=first,
        first_granularity=first_granularity,
        groups=tuple(names),
        layers=tuple(layer for name in names for layer in members[name]),
        adapted=adapted,
    )


def granularity_of(model: keras.Model, group: str) -> str:
    """`coarse` or `fine`: which kind of group `group` names.

    Args:
        model: a `TransferModel`.
        group: `head`, `all`, `lora`, or a group name.

    Returns:
        The granularity in which `group` is a group (coarse preferred).

    Raises:
        ValueError: `group` is no group of the model (the valid ones listed).

    Example:
        >>> granularity_of(model, "transformer_layer_4")
        'fine'
    """
    if group in (HEAD, ALL, LORA):
        return COARSE
    groups = LayerGroups.of(model)
    try:
        return groups.granularity_of(group)
    except ValueError:
        raise ValueError(
            f"Unknown layer group {group!r}. Valid groups: 'head', 'all', 'lora', {groups.names()} "
            f"or fine groups {groups.names('fine')}. Received: train={group!r}."
        ) from None


def _checked(model, number: int, stage: Stage) -> PlannedStage:
    """The stage's target and size, with the checks that need the model."""
    target = resolve_target(model, stage)  # unknown groups fail before any training
    if stage.mixing and model.modality != "image":
        kind, strength = stage.mixing
        raise ValueError(
            f"MixUp and CutMix mix images; this is a {model.modality} model. "
            f"Received: {kind}={strength!r}."
        )
    resized = stage.image_size is not None and tuple(model.input_shape[1:3]) != (
        stage.image_size,
        stage.image_size,
    )
    if resized:
        model.check_any_image_size()
    if stage.drop_path:  # a stage with nothing that can drop raises here
        check_drop_path(model, list(target.layers), stage.drop_path)
    return PlannedStage(number, stage, target, resized=resized)


def _with_cut(model, planned: PlannedStage, caching: bool, required: bool) -> PlannedStage:
    """`planned` with its cut, or with the reason it trains end to end."""
    stage, target = planned.stage, planned.target
    if stage.mixing:
        reason = f"{stage.mixing[0]} mixes the images of each batch"
    elif planned.resized:
        reason = f"the stage trains at {stage.image_size} px"
    elif target.first == ALL:
        reason = EVERY_LAYER
    elif not caching:
        reason = CACHING_OFF
    else:
        try:
            split = split_model(model, target.first, target.first_granularity)
        except CacheRefused as refused:
            if required:
                raise
            reason = str(refused)
        else:
            return dataclasses.replace(planned, split=split)
    return dataclasses.replace(planned, end_to_end=reason)


def _shared_cuts(planned: list[PlannedStage]) -> list[PlannedStage]:
    """Stages cut at the same place share the first one's `Split`: one cache, one
    name (`block6` and a LoRA stage's `block6a` cut the same tensors)."""
    first_of: dict[frozenset, Split] = {}
    shared = []
    for stage in planned:
        if stage.split is not None:
            kept = first_of.setdefault(stage.split.upper, stage.split)
            stage = dataclasses.replace(stage, split=kept)
        shared.append(stage)
    return shared


def _lowest_later_cut(split: Split, following: Sequence[PlannedStage]) -> Split | None:
    """The lowest cut below `split` that the following stages will cache at, up
    to the first stage that trains every layer (which changes them all)."""
    lowest = None
    for later in following:
        if later.target.first == ALL:
            break
        if later.split is not None and later.split.is_below(lowest or split):
            lowest = later.split
    return lowest
