"""Evaluation and checkpoints with the moving average of the weights (`Stage(ema=...)`).

Keras keeps an exponential moving average of the trained variables when an
optimizer has `use_ema=True`, and writes it into the model only when `fit`
ends. `EmaWeights` makes every validation pass, and so the best-epoch
checkpoint and the early-stopping choice, see the averaged weights; training
itself goes on from the raw weights, which are put back at the epoch's end.
"""

from __future__ import annotations

import keras

from kerastl._internals import ema_pairs


class EmaWeights(keras.callbacks.Callback):
    """Swaps the optimizer's averaged weights in for validation and the epoch's end.

    Put it last in the callback list: the callbacks before it (the run
    recorder's best checkpoint, early stopping) see the averaged weights at
    `on_epoch_end`; it then puts the raw weights back. `fit` leaves the
    averaged weights in the model (Keras's `finalize_variable_values`).

    Example:
        >>> model.compile(keras.optimizers.Adam(1e-3, use_ema=True, ema_momentum=0.99), loss)
        >>> model.fit(train, validation_data=val, callbacks=[recorder, EmaWeights()])
    """

    def __init__(self):
        super().__init__()
        self._raw = None

    def on_test_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        pairs = ema_pairs(optimizer) if optimizer is not None else []
        if self._raw is not None or not pairs:
            return  # a second validation in one epoch, or nothing averaged yet
        self._raw = [(variable, keras.ops.copy(variable.value)) for variable, _ in pairs]
        for variable, average in pairs:
            variable.assign(average)

    def on_epoch_end(self, epoch, logs=None):
        if self._raw is not None:
            for variable, value in self._raw:
                variable.assign(value)
            self._raw = None
