"""A fix for what Keras 3.15's `ExportArchive.track(model)` does to a SavedModel.

`track(model)` registers the model's Keras variables as the archive's
`variables`, `trainable_variables` and `non_trainable_variables`, and
`write_out` adds the `tf.Variable`s its endpoints capture as
`_all_variables`: two Python objects for each weight, which TensorFlow's
checkpoint cannot tell are one, so every weight is written twice and loaded
twice, by TF Serving too (keras-team/keras#23553; Lite0: 27.4 MB of
variables for 13.7 MB of weights). `write_out` also walks every tracked
model in SavedModel mode to find its lookup tables, which lists the concrete
functions of every layer (1.1 s for Lite0, whose bundle export took 7 s).

`track_model` registers the same three collections with the `tf.Variable`s
themselves, which the checkpoint then stores once, and tracks the model's
lookup tables and other resources, found by a checkpoint walk (milliseconds).
Retire it when `track(model)` stores each weight once
(`tests/test_export.py::test_keras_track_stores_every_weight_twice_and_the_fix_once`
shows the bug).
"""

from __future__ import annotations

import keras


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
