"""kerastl: transfer learning for Keras 3 / TensorFlow.

Example:
    >>> import kerastl
    >>> model = kerastl.TransferModel("efficientnet-lite0", num_classes=5)
    >>> kerastl.freeze(model)
    >>> print(kerastl.describe(model))
"""

from kerastl import export
from kerastl.backbones import (
    BackboneSpec,
    CheckpointError,
    HubUnavailableError,
    create_backbone,
    get_spec,
    list_backbones,
    read_state_dict,
)
from kerastl.backbones.hub import create_text_preprocessor
from kerastl.describe import describe
from kerastl.distribute import (
    ResumableBackup,
    apply_keras_fixes,
    check_model_in_scope,
    fit_resumable,
    get_strategy,
    global_batch_size,
    scale_learning_rate,
    set_precision,
    split_cpu,
    sync_batch_norm_statistics,
    to_strategy,
)
from kerastl.finetune import FineTuner, Stage, fine_tune
from kerastl.freezing import freeze, freeze_to, set_trainable_groups, trainable_groups, unfreeze
from kerastl.groups import GroupRules, group_variables, layer_groups
from kerastl.losses import SparseSmoothedCrossentropy
from kerastl.lr_finder import LRFindResult, lr_find
from kerastl.metrics import BalancedAccuracy
from kerastl.models import TransferModel
from kerastl.optimizers import (
    discriminative_optimizer,
    group_learning_rates,
    group_optimizer,
)
from kerastl.preprocessing import Preprocessing, load_image
from kerastl.saving import load_model
from kerastl.schedules import OneCycle, one_cycle, warmup_cosine
from kerastl.unfreezing import GradualUnfreezing

__version__ = "0.1.0"

__all__ = [
    "BackboneSpec",
    "BalancedAccuracy",
    "CheckpointError",
    "FineTuner",
    "GradualUnfreezing",
    "GroupRules",
    "HubUnavailableError",
    "LRFindResult",
    "OneCycle",
    "Preprocessing",
    "ResumableBackup",
    "SparseSmoothedCrossentropy",
    "Stage",
    "TransferModel",
    "apply_keras_fixes",
    "check_model_in_scope",
    "create_backbone",
    "create_text_preprocessor",
    "describe",
    "discriminative_optimizer",
    "export",
    "fine_tune",
    "fit_resumable",
    "freeze",
    "freeze_to",
    "get_spec",
    "get_strategy",
    "global_batch_size",
    "group_learning_rates",
    "group_optimizer",
    "group_variables",
    "layer_groups",
    "list_backbones",
    "load_image",
    "load_model",
    "lr_find",
    "one_cycle",
    "read_state_dict",
    "scale_learning_rate",
    "set_precision",
    "set_trainable_groups",
    "split_cpu",
    "sync_batch_norm_statistics",
    "to_strategy",
    "trainable_groups",
    "unfreeze",
    "warmup_cosine",
]
