"""A two-stage `FineTuner` run with a backup; the tests kill it and run it again.

Usage: staged_training.py BACKUP_DIR OUT [SECONDS_PER_BATCH [SECONDS_PER_DATA_BATCH [verbose]]]
Writes OUT.npy (the final weights) and OUT.json (history, best epoch).
Deterministic (`enable_op_determinism`, fixed seeds), so a resumed run can be
compared bit for bit with an uninterrupted one. The training data reshuffles
every pass and stage 2 draws random flips: the resumed run must replay the
passes the interrupted one made.
"""

import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from _workload import Pause, flat_weights, images, transfer_model

import kerastl

tf.config.experimental.enable_op_determinism()
backup_dir, out = sys.argv[1], sys.argv[2]
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
caching_pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
verbose = 1 if "verbose" in sys.argv[5:] else 0

x, y = images(48)
fixed = os.environ.get("KERASTL_TEST_FIXED_ORDER") == "1"
train = (
    tf.data.Dataset.from_tensor_slices((x, y))
    .shuffle(48, seed=7, reshuffle_each_iteration=not fixed)
    .batch(8)
)
if caching_pause:  # slows every pass over the data, caching included (same values)

    def slow(images, labels):
        time.sleep(caching_pause)
        return images, labels

    train = train.map(
        lambda a, b: tf.numpy_function(slow, [a, b], [tf.float32, tf.int64], stateful=True)
    ).map(lambda a, b: (tf.ensure_shape(a, [None, 32, 32, 3]), tf.ensure_shape(b, [None])))
vx, vy = images(16, seed=1)
validation = tf.data.Dataset.from_tensor_slices((vx, vy)).batch(8)

lora = os.environ.get("KERASTL_TEST_LORA") == "1"  # stage 2: cached LoRA on Lite0's top blocks
keras.utils.set_random_seed(0)
if lora:
    model = kerastl.TransferModel(
        "efficientnet-lite0", 3, weights=None, input_shape=(32, 32, 3), dropout=0.3
    )
else:
    model = transfer_model()
plain = os.environ.get("KERASTL_TEST_PLAIN") == "1"  # no augmentation, EMA, early stopping
tuner = kerastl.FineTuner(
    model,
    **({} if plain else {"augmentation": "flip", "cache_views": 2}),
    class_weight="balanced",
    metrics=("accuracy",),
    callbacks=(Pause(pause),),
    restore_best=False,
    backup_share=None,  # every epoch: the tests wait for given epochs' backups
    verbose=verbose,
)
extra = {} if plain else {"ema": 0.9, "patience": 3}
if lora:
    extra.update(train="block6", rank=2)
stages = [
    kerastl.Stage(2, lr=1e-2),
    kerastl.Stage(4, **{"train": "all", "lr": 1e-3, "lr_mult": 10, **extra}),
]
history = tuner.fit(train, validation, stages=stages, backup_dir=backup_dir)
np.save(out + ".npy", flat_weights(model))
with open(out + ".json", "w") as file:
    json.dump({"history": history.history, "best_epoch": tuner.recorder.best_epoch}, file)
print(f"epochs={history.epoch} best={tuner.recorder.best_epoch}")
