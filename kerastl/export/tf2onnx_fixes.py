"""Fixes for tf2onnx 1.17 bugs that Keras models hit, applied only while converting.

The first two are context managers, which `tf2onnx_fixes()` applies; the third
mends the converted graph.

1. `add_scalar_transpose`: the transpose optimizer's `_add_handler` merges a
   constant `Add` after a bias-less `Conv` into the Conv's bias and computes
   the bias length as `max(shape)`, which raises on a scalar constant
   (`ValueError: max() arg is an empty sequence`). MobileNetV3's hard-swish
   (`Conv → Add(3.0)`) hits it. tf2onnx catches the error, logs "Failed to
   apply optimize_transpose" and gives up on the whole pass, leaving about
   100 NHWC↔NCHW `Transpose` nodes in MobileNetV3-Small. A scalar is not a
   per-channel bias: the fix sends it to the generic handler, which pushes
   the transpose through the `Add` as for any other broadcastable operand.
2. `erfc_as_one_minus_erf`: tf2onnx has no handler for TensorFlow's `Erfc`,
   which `tf.nn.gelu(approximate=False)` computes with (ConvNeXt's GELU):
   the conversion stopped with "Tensorflow op [Erfc] is not supported". The
   fix converts it to `1 - Erf(x)` (ONNX's `Erf`, from opset 9) while a
   conversion runs, unless tf2onnx has a handler of its own. `1 - erf(x)`
   is off by up to float32's step at 1 (6e-8) where `erfc(x)` is near 0, and
   GELU's output by that times `|x| / 2`: at most 8.9e-7, near x = -5.3
   (measured in float32 against `tf.nn.gelu` on [-12, 0]).
3. `captured_constants_as_initializers`: `from_function` names every
   non-resource input of the concrete function as a graph input, and a
   function's inputs include the constants it captures (Keras's
   `Normalization` with a given mean and variance, ConvNeXt's first layer):
   the ONNX file asked for them as inputs beside `images` (though tf2onnx
   had frozen their values into the graph), and running it failed. The fix
   drops such inputs, or makes one a node reads an initializer.
"""

from __future__ import annotations

import contextlib

import numpy as np


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


def captured_constants_as_initializers(proto, function) -> None:
    """Mends the graph inputs tf2onnx made of `function`'s captured constants.

    An input no node reads (the constant was frozen into the graph) is
    dropped; one a node reads becomes an initializer holding the captured value.

    Args:
        proto: the `ModelProto` tf2onnx converted `function` to (changed in place).
        function: the `tf.function` converted, with its `input_signature`.
    """
    import tensorflow as tf
    from onnx import numpy_helper

    concrete = function.get_concrete_function(*function.input_signature)
    captured = concrete.captured_inputs
    placeholders = concrete.inputs[len(concrete.inputs) - len(captured) :]
    constants = {
        placeholder.name: value
        for placeholder, value in zip(placeholders, captured, strict=True)
        if value.dtype != tf.resource
    }
    read = {name for node in proto.graph.node for name in node.input}
    for graph_input in [i for i in proto.graph.input if i.name in constants]:
        proto.graph.input.remove(graph_input)
        if graph_input.name in read:
            value = np.asarray(constants[graph_input.name])
            proto.graph.initializer.append(numpy_helper.from_array(value, graph_input.name))


_ERF_OPSET = 9  # the first opset with `Erf`


@contextlib.contextmanager
def erfc_as_one_minus_erf():
    """Gives tf2onnx a handler for `Erfc`: `1 - Erf(x)` (see module doc)."""
    import tf2onnx.onnx_opset  # noqa: F401 (registers tf2onnx's own handlers)
    from tf2onnx import constants, utils
    from tf2onnx.handler import tf_op

    opsets = tf_op.get_opsets()[constants.ONNX_DOMAIN]
    if any("Erfc" in handlers for handlers in opsets):
        yield
        return

    def erfc(ctx, node, **kwargs):
        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
        one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
        node.type = "Sub"
        ctx.replace_inputs(node, [one.output[0], erf.output[0]])

    tf_op.register_handler(erfc, _ERF_OPSET, ["Erfc"], constants.ONNX_DOMAIN, {})
    try:
        yield
    finally:
        del opsets[_ERF_OPSET]["Erfc"]


@contextlib.contextmanager
def tf2onnx_fixes(enabled: bool = True):
    """Applies every fix in this module for the duration of a conversion."""
    if not enabled:
        yield
        return
    with add_scalar_transpose(), erfc_as_one_minus_erf():
        yield
