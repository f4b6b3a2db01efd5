"""One worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG set by the test).

Usage: multi_worker_training.py BACKUP_DIR OUT_PREFIX [SECONDS_PER_BATCH]
Trains a small TransferModel with a group optimizer through `fit_resumable`
(backing up every 2 batches) and saves this worker's final weights to
OUT_PREFIX-<task index>.npy.
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf
from _workload import Pause, compiled_transfer_model, epoch_dataset, flat_weights, images

import kerastl

backup_dir, out_prefix = sys.argv[1], sys.argv[2]
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

strategy = kerastl.get_strategy()
assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), strategy
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    model = compiled_transfer_model(metrics=["accuracy"])
x, y = images(48)

options = tf.data.Options()
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
history = kerastl.fit_resumable(
    model,
    lambda epoch: epoch_dataset(x, y, 8, epoch).with_options(options),
    epochs=3,
    backup_dir=backup_dir,
    save_freq=2,
    callbacks=[Pause(pause)],
    verbose=0,
    keep_backup=True,
)
np.save(f"{out_prefix}-{task}.npy", flat_weights(model))
print(
    f"task={task} resumed_from={history.resumed_from} "
    f"iterations={int(model.optimizer.iterations.numpy())} loss={history.history['loss'][-1]:.6f}"
)
