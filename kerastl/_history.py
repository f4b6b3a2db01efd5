"""A run made of several `fit` calls (stages, resumed runs): the calls that
finish an interrupted run, and one `keras.callbacks.History` over all of them."""

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


def remaining_fits(epoch: int, epochs: int, step: int) -> list[tuple[int, int, int]]:
    """The `fit` calls that finish a run backed up after `step` batches of epoch
    `epoch` (0-based): the rest of that epoch alone, then the other epochs.

    Args:
        epoch: the epoch the backup is in.
        epochs: the run's (or stage's) end, exclusive.
        step: batches of `epoch` already trained (0: the epoch had not begun).

    Returns:
        `(batches to skip, initial_epoch, epochs)` for each `fit`, in order.

    Example:
        >>> remaining_fits(3, 10, 40)
        [(40, 3, 4), (0, 4, 10)]
    """
    fits = []
    if step and epoch < epochs:
        fits.append((step, epoch, epoch + 1))
        epoch += 1
    if epoch < epochs:
        fits.append((0, epoch, epochs))
    return fits
