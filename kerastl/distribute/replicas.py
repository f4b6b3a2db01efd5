"""Keeping per-replica state in agreement across replicas.

Keras 3 creates BatchNormalization's moving statistics with aggregation
"none": under a strategy every replica updates its own copy from its own
slice of the batch, and saving reads replica 0's (Keras 2 averaged them on
read). Two workers therefore end with different moving statistics.
`sync_batch_norm_statistics` averages them across all replicas;
`fit_resumable` calls it before every backup and at the end of training.
"""

from __future__ import annotations

import keras

from kerastl._internals import sublayers


def sync_batch_norm_statistics(model: keras.Model) -> int:
    """Sets the moving mean/variance of every training BatchNormalization layer
    to their average over all replicas (a collective: call it on every worker).

    Args:
        model: a model built under its strategy's scope.

    Returns:
        The number of variables averaged (0 with one replica or no BN training).

    Example:
        >>> kerastl.sync_batch_norm_statistics(model)
    """
    import tensorflow as tf

    strategy = model.distribute_strategy
    if strategy.num_replicas_in_sync == 1:
        return 0
    variables = [
        variable
        for layer in sublayers(model, include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        for variable in (layer.moving_mean, layer.moving_variance)
    ]
    if not variables:
        return 0

    def average_on_replica():
        context = tf.distribute.get_replica_context()
        means = context.all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables]
        )
        for variable, mean in zip(variables, means, strict=True):
            variable.assign(mean)

    tf.function(lambda: strategy.run(average_on_replica))()
    return len(variables)
