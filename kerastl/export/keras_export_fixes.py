"""Fixes for what Keras 3.15 puts in an exported graph.

1. `track_model`: `ExportArchive.track(model)` registers the model's Keras
   variables as the archive's `variables`, `trainable_variables` and
   `non_trainable_variables`, and `write_out` adds the `tf.Variable`s its
   endpoints capture as `_all_variables`: two Python objects for each weight,
   which TensorFlow's checkpoint cannot tell are one, so every weight is
   written twice and loaded twice, by TF Serving too (keras-team/keras#23553;
   Lite0: 27.4 MB of variables for 13.7 MB of weights). `write_out` also walks
   every tracked model in SavedModel mode to find its lookup tables, which
   lists the concrete functions of every layer (1.1 s for Lite0, whose bundle
   export took 7 s). `track_model` registers the same three collections with
   the `tf.Variable`s themselves, which the checkpoint then stores once, and
   tracks the model's lookup tables and other resources, found by a
   checkpoint walk (milliseconds). Retire it when `track(model)` stores each
   weight once (`tests/test_export.py::test_keras_track_stores_every_weight_twice_and_the_fix_once`
   shows the bug).
2. `grouped_convolutions_without_xla`: Keras's TensorFlow backend runs every
   grouped convolution as a `tf.function(jit_compile=True)`, since
   TensorFlow's CPU kernels lack them. An exported graph then holds
   XLA-compiled functions: stock TF Serving disables XLA compilation (unless
   started with `--xla_cpu_compilation_enabled`) and answers every request
   with "XLA compilation disabled", and tf2onnx cannot convert them. ConvNeXt's
   7x7 convolutions are grouped with one input channel per group: depthwise
   convolutions, which TensorFlow, ONNX and LiteRT all have. While an export
   traces the model, those run as Keras's `depthwise_conv` (the same weights,
   reshaped); other grouped convolutions keep Keras's XLA function. Retire it
   when Keras stops compiling them
   (`tests/test_export.py::test_a_convnext_exports_without_xla_and_converts_to_onnx`
   shows Keras's graph).
"""

from __future__ import annotations

import contextlib

import keras

from kerastl._internals import tensorflow_nn


def track_model(archive: keras.export.ExportArchive, model: keras.Model) -> None:
    """What `archive.track(model)` does, storing each weight once.

    Args:
        archive: the `keras.export.ExportArchive` to write the model's endpoints.
        model: a built Keras model.

    Example:
        >>> archive = keras.export.ExportArchive()
        >>> track_model(archive, model)
        >>> archive.add_endpoint("serve", model.call, input_signature=...)
    """
    import tensorflow as tf
    from tensorflow.saved_model.experimental import TrackableResource

    collections = {
        "variables": model.variables,
        "trainable_variables": model.trainable_variables,
        "non_trainable_variables": model.non_trainable_variables,
    }
    for name, variables in collections.items():
        archive.add_variable_collection(name, [_tf_variable(v) for v in variables])
    for trackable in tf.train.TrackableView(model).descendants():
        if isinstance(trackable, TrackableResource):  # a lookup table the endpoints may use
            archive.track(trackable)


def _tf_variable(variable):
    """The `tf.Variable` the endpoints capture: the one a Keras variable holds, and of
    a `tf.distribute` variable (a model built under `MirroredStrategy`) its first
    component, which a function traced outside the strategy reads."""
    import tensorflow as tf

    value = variable.value if isinstance(variable, keras.Variable) else variable
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


@contextlib.contextmanager
def grouped_convolutions_without_xla():
    """Traces depthwise grouped convolutions without XLA (see the module docstring).

    Example:
        >>> with grouped_convolutions_without_xla():
        ...     concrete = tf.function(model.call).get_concrete_function(spec)
    """
    nn = tensorflow_nn()
    keras_conv = nn.conv

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        channels_last = (data_format or keras.config.image_data_format()) == "channels_last"
        channels = inputs.shape[-1 if channels_last else 1]
        spatial = len(inputs.shape) - 2
        if spatial > 2 or kernel.shape[-2] != 1 or channels in (None, 1):
            return keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        # groups == channels: output channel c * m + k reads input channel c, as in a
        # depthwise kernel of shape (..., channels, m).
        depthwise = keras.ops.reshape(kernel, (*kernel.shape[:-2], channels, -1))
        strides, dilation_rate = (
            value if isinstance(value, int) else tuple(value) for value in (strides, dilation_rate)
        )
        return nn.depthwise_conv(inputs, depthwise, strides, padding, data_format, dilation_rate)

    nn.conv = conv
    try:
        yield
    finally:
        nn.conv = keras_conv
