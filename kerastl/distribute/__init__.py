"""Training under tf.distribute: strategies, Keras fixes, mixed precision, resume.

Example:
    >>> strategy = kerastl.get_strategy()  # TPU, multi-worker, GPUs or one device
    >>> with strategy.scope():
    ...     model = kerastl.TransferModel("efficientnet-lite0", num_classes=2)
    ...     model.compile("adam", "sparse_categorical_crossentropy")
    >>> kerastl.fit_resumable(model, train_ds, epochs=5, backup_dir="runs/a/backup")
"""

from kerastl.distribute.keras_fixes import apply_keras_fixes
from kerastl.distribute.precision import set_precision
from kerastl.distribute.replicas import sync_batch_norm_statistics
from kerastl.distribute.resume import ResumableBackup, fit_resumable
from kerastl.distribute.strategies import (
    check_model_in_scope,
    get_strategy,
    global_batch_size,
    is_chief,
    scale_learning_rate,
    split_cpu,
    to_strategy,
)

__all__ = [
    "ResumableBackup",
    "apply_keras_fixes",
    "check_model_in_scope",
    "fit_resumable",
    "get_strategy",
    "global_batch_size",
    "is_chief",
    "scale_learning_rate",
    "set_precision",
    "split_cpu",
    "sync_batch_norm_statistics",
    "to_strategy",
]
