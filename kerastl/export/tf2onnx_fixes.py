"""Fixes for tf2onnx 1.17 bugs that Keras models hit, applied only while converting.

Each fix is a context manager; `tf2onnx_fixes()` applies them all.

1. `add_scalar_transpose`: the transpose optimizer's `_add_handler` merges a
   constant `Add` after a bias-less `Conv` into the Conv's bias and computes
   the bias length as `max(shape)`, which raises on a scalar constant
   (`ValueError: max() arg is an empty sequence`). MobileNetV3's hard-swish
   (`Conv → Add(3.0)`) hits it. tf2onnx catches the error, logs "Failed to
   apply optimize_transpose" and gives up on the whole pass, leaving about
   100 NHWC↔NCHW `Transpose` nodes in MobileNetV3-Small. A scalar is not a
   per-channel bias: the fix sends it to the generic handler, which pushes
   the transpose through the `Add` as for any other broadcastable operand.
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def add_scalar_transpose():
    """Patches tf2onnx's transpose optimizer for `Conv → Add(scalar)` (see module doc)."""
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    original = TransposeOptimizer._add_handler

    def add_handler(self, trans, node):
        operand = node.inputs[1]
        if operand.is_const() and operand.get_tensor_value(as_list=False).ndim == 0:
            return self._handle_node_having_branches(trans, node)
        return original(self, trans, node)

    TransposeOptimizer._add_handler = add_handler
    try:
        yield
    finally:
        TransposeOptimizer._add_handler = original


@contextlib.contextmanager
def tf2onnx_fixes(enabled: bool = True):
    """Applies every fix in this module for the duration of a conversion."""
    if not enabled:
        yield
        return
    with add_scalar_transpose():
        yield
