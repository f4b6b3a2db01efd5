"""Trains a TransferModel with `fit_resumable`; the test kills it and reruns it.

Usage: resumable_training.py BACKUP_DIR OUT.npy [SECONDS_PER_BATCH]
Deterministic: fixed seeds and `enable_op_determinism`, so a resumed run can
be compared bit for bit with an uninterrupted one.
"""

import sys
import time

import keras
import numpy as np
import tensorflow as tf
from _workload import epoch_dataset, flat_weights, images, transfer_model

import kerastl

tf.config.experimental.enable_op_determinism()
backup_dir, out = sys.argv[1], sys.argv[2]
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0

keras.utils.set_random_seed(0)
model = transfer_model()
model.compile(
    kerastl.group_optimizer(
        model, {"head": keras.optimizers.Adam(1e-3)}, default=keras.optimizers.Adam(1e-4)
    ),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
x, y = images(64)


class Pause(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        time.sleep(pause)


history = kerastl.fit_resumable(
    model,
    lambda epoch: epoch_dataset(x, y, 8, epoch),
    epochs=3,
    backup_dir=backup_dir,
    save_freq=3,
    callbacks=[Pause()],
    verbose=0,
)
np.save(out, flat_weights(model))
print(
    f"resumed_from={history.resumed_from} iterations={int(model.optimizer.iterations.numpy())} "
    f"epochs={history.epoch}"
)
