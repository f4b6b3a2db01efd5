"""`Stage`: the settings of one phase of fine-tuning, checked on their own.

What a stage means for a particular model (which groups train, where the
model is cut for caching, why it trains end to end) is resolved once, before
any training, by `kerastl.training.stage_plan`; the optimizer and loss it
compiles with come from `kerastl.training.stage_compile`.
"""

from __future__ import annotations

import dataclasses

from kerastl._validation import check_positive_int
from kerastl.data.augment import MIXINGS
from kerastl.peft import TARGETS

HEAD, ALL, LORA = "head", "all", "lora"
DEFAULT_RANK = 8  # a LoRA stage's rank when `train="lora"` gives none
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of fine-tuning.

    Args:
        epochs: epochs in this stage.
        train: `"head"`, `"all"`, or a group name (coarse, or fine such as
            `transformer_layer_4`): that group and every group after it
            train (`freeze_to`); `"lora"`: LoRA adapters on every backbone
            group (`rank` 8 unless given).
        lr: the head's (peak) learning rate.
        lr_mult: spread rates over the coarse training groups, the first at
            `lr / lr_mult` (fastai `slice`).
        lr_decay: layer-wise decay instead: each fine group below the head
            gets `lr_decay` times the rate of the one above it.
        optimizer: `adam`, `adamw` (Keras's, fused on TensorFlow:
            `kerastl.fused_adam`) or `sgd` (momentum 0.9).
        weight_decay: decoupled weight decay (biases and norms exempt).
        dropout: the head's dropout rate in this stage (None: the model's).
        label_smoothing: in [0, 1).
        patience: stop after this many epochs without a better validation
            loss and restore the stage's best weights (needs validation data).
        train_bn: let BatchNormalization layers in training groups update.
        warmup: fraction of the stage's steps spent rising linearly to `lr`.
        schedule: `constant` after warm-up, or `cosine` decay to 0.
        ema: keep an exponential moving average of the trained weights with
            this momentum (e.g. 0.99; Keras's `use_ema`): validation, the
            best-epoch checkpoint and the stage's final weights are the
            averaged ones; None: off.
        mixup: MixUp's Beta parameter (e.g. 0.2): pairs of training images
            and their labels blended (`kerastl.data.label_mixing`); the
            stage trains end to end on soft labels; images only.
        cutmix: CutMix's Beta parameter (e.g. 1.0), likewise; give one of
            `mixup` and `cutmix`.
        drop_path: stochastic depth in the backbone blocks this stage trains:
            the deepest block's rate, shallower ones less (in proportion to
            the rates the backbone was built with); frozen blocks never drop.
            None: trained blocks at their built rates (Keras's EfficientNets
            0.2 deep down; kerastl's Lite0 0). Backbones without drop-path
            layers refuse a rate > 0 (`kerastl.training.drop_path`).
        image_size: train at this image side (progressive resizing): the
            stage's training images are resized to it and it trains end to end
            (`TransferModel.at_any_image_size`); validation, the best-epoch
            choice and the final model stay at the model's input size. Image
            models whose backbone takes any size; None: the model's size.
        rank: train the backbone groups of `train` through LoRA adapters of
            this rank (`kerastl.lora`): only the adapters and the head train,
            and the feature cache covers every group below the first adapted
            one. Adapters stay in the model (exports merge them); a group
            holding adapters trains only them in later stages too.
        lora_alpha: the adapters' scale is `lora_alpha / rank` (None: 1).
        lora_targets: which layers get adapters: a preset of
            `kerastl.peft.TARGETS` (`auto`: attention query/value for
            transformers, convolutions for CNNs) or layer-name patterns.

    Example:
        >>> kerastl.Stage(epochs=5, train="block6", lr=1e-4, lr_mult=10, patience=2)
        >>> kerastl.Stage(epochs=3, train="lora", rank=8, lr=1e-3)
    """

    epochs: int
    train: str = HEAD
    lr: float = 1e-3
    lr_mult: float | None = None
    lr_decay: float | None = None
    optimizer: str = "adam"
    weight_decay: float | None = None
    dropout: float | None = None
    label_smoothing: float = 0.0
    patience: int | None = None
    train_bn: bool = False
    warmup: float = 0.0
    schedule: str = "constant"
    ema: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    drop_path: float | None = None
    image_size: int | None = None
    rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: str | tuple[str, ...] = "auto"

    def __post_init__(self):
        check_positive_int("epochs", self.epochs)
        if not isinstance(self.train, str) or not self.train:
            raise ValueError(
                "`train` must be 'head', 'all', 'lora' or a group name. "
                f"Received: train={self.train!r}."
            )
        self._check_lora()
        if not self.lr > 0:
            raise ValueError(f"`lr` must be positive. Received: lr={self.lr!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"`optimizer` must be one of {OPTIMIZERS}. Received: optimizer={self.optimizer!r}."
            )
        if self.lr_mult is not None and self.lr_mult < 1:
            raise ValueError(f"`lr_mult` must be >= 1. Received: lr_mult={self.lr_mult!r}.")
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise ValueError(f"`lr_decay` must be in (0, 1]. Received: lr_decay={self.lr_decay!r}.")
        if self.lr_mult is not None and self.lr_decay is not None:
            raise ValueError(
                "Give `lr_mult` or `lr_decay`, not both. "
                f"Received: lr_mult={self.lr_mult}, lr_decay={self.lr_decay}."
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"`patience` must be >= 1. Received: patience={self.patience!r}.")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(
                "`label_smoothing` must be in [0, 1). "
                f"Received: label_smoothing={self.label_smoothing!r}."
            )
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={self.dropout!r}.")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"`warmup` must be in [0, 1). Received: warmup={self.warmup!r}.")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"`ema` must be in (0, 1). Received: ema={self.ema!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"`schedule` must be one of {SCHEDULES}. Received: schedule={self.schedule!r}."
            )
        for kind in MIXINGS:
            strength = getattr(self, kind)
            if strength is not None and (isinstance(strength, bool) or not strength > 0):
                raise ValueError(f"`{kind}` must be > 0. Received: {kind}={strength!r}.")
        if self.mixup is not None and self.cutmix is not None:
            raise ValueError(
                "Give `mixup` or `cutmix`, not both. "
                f"Received: mixup={self.mixup}, cutmix={self.cutmix}."
            )
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise ValueError(
                f"`drop_path` must be in [0, 1). Received: drop_path={self.drop_path!r}."
            )
        if self.image_size is not None:
            check_positive_int("image_size", self.image_size)

    def _check_lora(self) -> None:
        if self.train == LORA and self.rank is None:
            object.__setattr__(self, "rank", DEFAULT_RANK)
        if self.rank is not None:
            check_positive_int("rank", self.rank)
            if self.train == HEAD:
                raise ValueError(
                    "A LoRA stage adapts backbone groups; `train='head'` trains only the head. "
                    f"Received: train='head', rank={self.rank}."
                )
        elif self.lora_alpha is not None:
            raise ValueError(
                f"`lora_alpha` needs `rank`. Received: lora_alpha={self.lora_alpha!r}, rank=None."
            )
        if self.lora_alpha is not None and (
            isinstance(self.lora_alpha, bool) or not self.lora_alpha > 0
        ):
            raise ValueError(
                f"`lora_alpha` must be a positive number. Received: lora_alpha={self.lora_alpha!r}."
            )
        targets = self.lora_targets
        if isinstance(targets, list):
            object.__setattr__(self, "lora_targets", targets := tuple(targets))
        if not (isinstance(targets, str) and targets in TARGETS) and not (
            isinstance(targets, tuple) and targets and all(isinstance(t, str) for t in targets)
        ):
            raise ValueError(
                f"`lora_targets` must be one of {TARGETS} or a list of layer-name patterns. "
                f"Received: lora_targets={self.lora_targets!r}."
            )

    @property
    def label(self) -> str:
        """What trains, for reports: `head`, `block6`, `lora r8`, `block6 lora r8`."""
        if not self.rank:
            return self.train
        return f"{'' if self.train == LORA else self.train + ' '}lora r{self.rank}"

    @property
    def mixing(self) -> tuple[str, float] | None:
        """`("mixup" | "cutmix", strength)` when the stage mixes images, else None."""
        for kind in MIXINGS:
            if getattr(self, kind) is not None:
                return kind, getattr(self, kind)
        return None

    @property
    def rate_rule(self) -> str:
        """How the rates are spread: `one`, `spread xN` or `decay D` (for reports)."""
        if self.train != HEAD and self.lr_mult:
            return f"spread x{self.lr_mult:g}"
        if self.train != HEAD and self.lr_decay:
            return f"decay {self.lr_decay:g}"
        return "one"
