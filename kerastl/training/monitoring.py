"""`check_monitor`: the value that picks the best epoch, checked before training."""

from __future__ import annotations

import difflib


def logged_names(metrics, *, validation: bool) -> list[str]:
    """The values `fit` logs for these metrics: `loss`, each metric, and `val_` twins.

    Args:
        metrics: metric names (`"accuracy"`, `"balanced_accuracy"`, ...) or objects.
        validation: whether there is validation data.

    Returns:
        The logged names, training ones first.

    Example:
        >>> logged_names(("accuracy",), validation=True)
        ['loss', 'accuracy', 'val_loss', 'val_accuracy']
    """
    names = ["loss"]
    for metric in metrics:
        name = metric if isinstance(metric, str) else getattr(metric, "name", None)
        names.append(name or getattr(metric, "__name__", str(metric)))
    return names + [f"val_{name}" for name in names] if validation else names


def check_monitor(monitor: str, metrics, *, validation: bool) -> None:
    """Raises before any training if `monitor` is not a value `fit` will log.

    Args:
        monitor: the value that picks the best epoch (e.g. `val_balanced_accuracy`).
        metrics: the metrics training logs (see `logged_names`).
        validation: whether there is validation data.

    Raises:
        ValueError: naming the closest logged value and all of them.

    Example:
        >>> check_monitor("val_acc", ("accuracy",), validation=True)
        Traceback (most recent call last):
        ValueError: ... Did you mean 'val_accuracy'? ...
    """

    names = logged_names(metrics, validation=validation)
    if monitor in names:
        return
    near = difflib.get_close_matches(monitor, names, n=1, cutoff=0.5)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    without = "" if validation else " (there is no validation data, so no `val_` values)"
    raise ValueError(
        f"`monitor` names a value training will not log{without}.{hint} Logged values: "
        f"{names}. Received: monitor={monitor!r}."
    )
