"""40 steps of MirroredStrategy (2 logical CPUs) + mixed_float16 with a group optimizer.

Replica 1's half of the first 3 batches carries sample weight 1e4: its scaled
gradients overflow float16 while replica 0's stay finite, the situation in
which Keras's LossScaleOptimizer, deciding from replica 0 alone, applies
inf/NaN gradients. Prints one line of JSON: finiteness of every loss, weight
and BatchNorm statistic, and the loss scale after each step.
Run with KERASTL_KERAS_FIXES=0 to see the unfixed Keras behaviour (Keras's own
LossScaleOptimizer; with the fixes, kerastl's AllReplicaLossScaleOptimizer).
"""

import json

import keras
import numpy as np
import tensorflow as tf

import kerastl

kerastl.split_cpu(2)
from _workload import images, transfer_model  # noqa: E402

kerastl.set_precision("mixed_float16")
strategy = kerastl.get_strategy("mirrored")
assert strategy.num_replicas_in_sync == 2
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = transfer_model(dropout=0.0)
    model.compile(
        kerastl.group_optimizer(
            model,
            {"head": keras.optimizers.SGD(1e-2)},
            default=keras.optimizers.SGD(1e-3),
        ),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
x, y = images(40 * 8)
weights = np.ones((40, 8), "float32")
weights[:3, 4:] = 1e4  # replica 1 gets the second half of each global batch of 8
dataset = tf.data.Dataset.from_tensor_slices((x, y, weights.ravel())).batch(8)
losses, scales = [], []


class Record(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        losses.append(float(logs["loss"]))
        scales.append(float(model.optimizer.dynamic_scale.numpy()))


model.fit(dataset, epochs=1, verbose=0, callbacks=[Record()])
batch_norm = [v for v in model.non_trainable_weights if "moving" in v.path]
print(
    json.dumps(
        {
            "wrapped": type(model.optimizer).__name__,
            "loss_scaled": isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer),
            "steps": int(model.optimizer.iterations.numpy()),
            "finite_losses": [bool(np.isfinite(loss)) for loss in losses],
            "finite_weights": bool(all(np.isfinite(w).all() for w in model.trainable_weights)),
            "batch_norm_statistics": len(batch_norm),
            "finite_batch_norm": bool(all(np.isfinite(v).all() for v in batch_norm)),
            "scales": scales,
        }
    )
)
