"""Trains a TransferModel with `fit_resumable`; the test kills it and reruns it.

Usage: resumable_training.py BACKUP_DIR OUT.npy [SECONDS_PER_BATCH]
Deterministic: fixed seeds and `enable_op_determinism`, so a resumed run can
be compared bit for bit with an uninterrupted one.
"""

import sys

import numpy as np
import tensorflow as tf
from _workload import Pause, compiled_transfer_model, epoch_dataset, flat_weights, images

import kerastl

tf.config.experimental.enable_op_determinism()
backup_dir, out = sys.argv[1], sys.argv[2]
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0

model = compiled_transfer_model()
x, y = images(64)

history = kerastl.fit_resumable(
    model,
    lambda epoch: epoch_dataset(x, y, 8, epoch),
    epochs=3,
    backup_dir=backup_dir,
    save_freq=3,
    callbacks=[Pause(pause)],
    verbose=0,
)
np.save(out, flat_weights(model))
print(
    f"resumed_from={history.resumed_from} iterations={int(model.optimizer.iterations.numpy())} "
    f"epochs={history.epoch}"
)
