"""`describe`: a table of a model's layer groups, sizes and trainable state."""

from __future__ import annotations

import keras
import numpy as np

from kerastl._internals import sublayers
from kerastl.freezing import trainable_groups
from kerastl.groups import COARSE, layer_groups


def describe(model: keras.Model, granularity: str = COARSE) -> str:
    """Returns a table of the model's groups: layers, parameters, trainable state.

    Args:
        model: a `TransferModel` or a registered backbone.
        granularity: `"coarse"` (stages) or `"fine"` (blocks).

    Returns:
        The table as text, one row per group and a total row.

    Example:
        >>> print(kerastl.describe(kerastl.TransferModel("resnet50", 5, weights=None)))
        group   layers   params  trainable  state
        stem         7    9,536          0  frozen
        ...
    """
    groups = layer_groups(model, granularity)
    states = trainable_groups(model, granularity)
    trainable_ids = {id(v) for v in model.trainable_weights}
    rows = [("group", "layers", "params", "trainable", "state", "batchnorm")]
    totals = [0, 0, 0]
    for name, layers in groups.items():
        variables = _unique(v for layer in layers for v in layer.weights)
        params = sum(_size(v) for v in variables)
        trainable = sum(_size(v) for v in variables if id(v) in trainable_ids)
        norms = [
            s
            for layer in layers
            for s in sublayers(layer)
            if isinstance(s, keras.layers.BatchNormalization)
        ]
        training = sum(1 for s in norms if any(id(v) in trainable_ids for v in s.weights))
        bn = "-" if not norms else f"{training}/{len(norms)} training"
        count = sum(1 for layer in layers if not isinstance(layer, keras.layers.InputLayer))
        rows.append((name, f"{count}", f"{params:,}", f"{trainable:,}", states[name], bn))
        totals = [totals[0] + count, totals[1] + params, totals[2] + trainable]
    rows.append(("total", f"{totals[0]}", f"{totals[1]:,}", f"{totals[2]:,}", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = (
            [row[0].ljust(widths[0])]
            + [cell.rjust(width) for cell, width in zip(row[1:4], widths[1:4], strict=True)]
            + [cell.ljust(width) for cell, width in zip(row[4:], widths[4:], strict=True)]
        )
        lines.append("  ".join(cells).rstrip())
        if index == 0 or index == len(rows) - 2:
            lines.append("-" * len(lines[0]))
    return f"{model.name} ({granularity} groups)\n" + "\n".join(lines)


def _unique(variables):
    seen, result = set(), []
    for variable in variables:
        if id(variable) not in seen:
            seen.add(id(variable))
            result.append(variable)
    return result


def _size(variable) -> int:
    return int(np.prod(variable.shape)) if variable.shape else 1
