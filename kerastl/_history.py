"""One `keras.callbacks.History` built from several `fit` calls (stages, resumed runs)."""

from __future__ import annotations

from collections.abc import Iterable

import keras


def empty_history() -> keras.callbacks.History:
    """A `History` with no epochs, ready for `extend_history`."""
    history = keras.callbacks.History()
    history.history, history.epoch = {}, []
    return history


def extend_history(
    history: keras.callbacks.History, logs: dict[str, list], epochs: Iterable[int]
) -> keras.callbacks.History:
    """Appends epochs and their logged values to `history`; returns it.

    Args:
        history: from `empty_history` or a `fit`.
        logs: metric name → one value per epoch (a `History.history`).
        epochs: the (0-based) epoch numbers those values belong to.

    Returns:
        `history`, extended.

    Example:
        >>> history = extend_history(empty_history(), result.history, result.epoch)
    """
    history.epoch.extend(epochs)
    for key, values in logs.items():
        history.history.setdefault(key, []).extend(values)
    return history
