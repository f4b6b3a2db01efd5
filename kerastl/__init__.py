"""kerastl: transfer learning for Keras 3 / TensorFlow.

Example:
    >>> import kerastl
    >>> model = kerastl.TransferModel("efficientnet-lite0", num_classes=5)
    >>> kerastl.freeze(model)
    >>> print(kerastl.describe(model))
"""

import os as _os
import sys as _sys

# Public name -> the module that defines it. `import kerastl` imports them all
# (registering kerastl's Keras classes, so `keras.models.load_model` finds them),
# except in the `kerastl` command, which imports what each subcommand needs after
# parsing its arguments: `kerastl --help` answers without starting TensorFlow.
_EXPORTS = {
    "BackboneSpec": "kerastl.backbones",
    "BackupError": "kerastl.training.staged_backup",
    "BalancedAccuracy": "kerastl.training.metrics",
    "CheckpointError": "kerastl.backbones",
    "FineTuner": "kerastl.training.finetune",
    "GradualUnfreezing": "kerastl.training.unfreezing",
    "GroupOptimizer": "kerastl.optimizers",
    "GroupRules": "kerastl.groups",
    "HubUnavailableError": "kerastl.backbones",
    "LayerGroups": "kerastl.groups",
    "LRFindResult": "kerastl.training.lr_finder",
    "OneCycle": "kerastl.training.schedules",
    "Preprocessing": "kerastl.preprocessing",
    "ResumableBackup": "kerastl.distribute",
    "RunFinished": "kerastl.training.staged_backup",
    "RunInterrupted": "kerastl.training.staged_backup",
    "SparseSmoothedCrossentropy": "kerastl.training.losses",
    "Stage": "kerastl.training.finetune",
    "TransferModel": "kerastl.models",
    "apply_keras_fixes": "kerastl.distribute",
    "calibrate": "kerastl.training.calibration",
    "check_model_in_scope": "kerastl.distribute",
    "create_backbone": "kerastl.backbones",
    "create_text_preprocessor": "kerastl.backbones.tokenizers",
    "describe": "kerastl.describe",
    "discriminative_optimizer": "kerastl.optimizers",
    "evaluate": "kerastl.training.evaluation",
    "export": "kerastl.export",
    "fine_tune": "kerastl.training.finetune",
    "fit_resumable": "kerastl.distribute",
    "freeze": "kerastl.freezing",
    "freeze_to": "kerastl.freezing",
    "get_spec": "kerastl.backbones",
    "get_strategy": "kerastl.distribute",
    "global_batch_size": "kerastl.distribute",
    "gradcam": "kerastl.training.gradcam",
    "is_chief": "kerastl.distribute",
    "group_learning_rates": "kerastl.optimizers",
    "group_optimizer": "kerastl.optimizers",
    "group_variables": "kerastl.groups",
    "layer_groups": "kerastl.groups",
    "list_backbones": "kerastl.backbones",
    "load_image": "kerastl.preprocessing",
    "load_lora": "kerastl.peft",
    "load_model": "kerastl.saving",
    "lora": "kerastl.peft",
    "lr_find": "kerastl.training.lr_finder",
    "merge_lora": "kerastl.peft",
    "one_cycle": "kerastl.training.schedules",
    "predict_probabilities": "kerastl.training.evaluation",
    "rank_backbones": "kerastl.training.ranking",
    "read_state_dict": "kerastl.backbones",
    "save_lora": "kerastl.peft",
    "scale_learning_rate": "kerastl.distribute",
    "set_precision": "kerastl.distribute",
    "set_trainable_groups": "kerastl.freezing",
    "split_cpu": "kerastl.distribute",
    "sync_batch_norm_statistics": "kerastl.distribute",
    "to_strategy": "kerastl.distribute",
    "trainable_groups": "kerastl.freezing",
    "unfreeze": "kerastl.freezing",
    "warmup_cosine": "kerastl.training.schedules",
}


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'kerastl' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(module_name)
    value = module if name == "export" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def _import_all() -> None:
    """Imports every public name (and with them every registered Keras class);
    a name already bound is left as it is."""
    for name in _EXPORTS:
        if name not in globals():
            __getattr__(name)


if _os.path.basename(_sys.argv[0] if _sys.argv else "") != "kerastl":
    _import_all()


__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)
