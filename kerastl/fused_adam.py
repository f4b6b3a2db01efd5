"""Adam and AdamW whose TensorFlow update is one fused kernel per variable.

Keras 3's `Adam` updates each variable on the TensorFlow backend with about
ten element-wise ops, each a full pass over the weights; `AdamW`'s weight
decay reads `learning_rate` once per variable, so under a schedule every
step builds and runs the schedule (a `cond`, with warm-up) once per
variable, 105 times for MiniLM; and with an embedding's sparse gradient,
whose rows repeat (a token seen twice in a batch), Keras squares each row
before the rows are summed, so Adam's second moment is not the gradient's.

`FusedAdam` and `FusedAdamW` are those optimizers, with the same arguments,
variables and saved form, whose update is TensorFlow's `ResourceApplyAdam`
kernel (the one tf.keras 2 used) on the summed gradient, the rate computed
once per step. `tests/test_fused_adam.py` compares them with Keras's (equal
up to float rounding on dense gradients) and shows Keras's schedule and
sparse-row behaviours; `bench/fused_adam.py` measures the speed. On other
backends, and with `amsgrad`, they are Keras's. `Stage` builds them for
`optimizer: adam` / `adamw`; a model saved with one reloads where kerastl
is imported (as every `TransferModel` does).
"""

from __future__ import annotations

import keras

from kerastl._internals import adam_slots, decays


class _FusedAdamUpdate:
    """Replaces Keras's per-variable Adam update (and AdamW decay) on TensorFlow."""

    def _fused(self) -> bool:
        return keras.backend.backend() == "tensorflow" and not self.amsgrad

    def _apply_weight_decay(self, variables):  # Keras's hook, called before the updates
        if not self._fused():
            super()._apply_weight_decay(variables)
        # Fused: `update_step` decays each variable with the step's one rate.

    def update_step(self, gradient, variable, learning_rate):
        if not self._fused():
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        rate = tf.cast(learning_rate, dtype)
        if self.weight_decay and decays(self, variable):
            variable.assign_sub(variable * (tf.cast(self.weight_decay, dtype) * rate))
        momentum, velocity = adam_slots(self, variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=momentum.value.handle,
            v=velocity.value.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=rate,
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(tf.convert_to_tensor(gradient), dtype),  # repeated sparse rows summed
        )


@keras.saving.register_keras_serializable(package="kerastl")
class FusedAdam(_FusedAdamUpdate, keras.optimizers.Adam):
    """`keras.optimizers.Adam`, one fused kernel per variable on TensorFlow.

    Args:
        **kwargs: `keras.optimizers.Adam`'s arguments.

    Example:
        >>> model.compile(FusedAdam(1e-3), loss="mse")
    """


@keras.saving.register_keras_serializable(package="kerastl")
class FusedAdamW(_FusedAdamUpdate, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW`, one fused kernel per variable on TensorFlow,
    the (decoupled) weight decay applied with the step's one learning rate.

    Args:
        **kwargs: `keras.optimizers.AdamW`'s arguments.

    Example:
        >>> model.compile(FusedAdamW(warmup_cosine(1000, 100)(5e-5), weight_decay=0.01), "mse")
    """
