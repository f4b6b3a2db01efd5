"""`kerastl rank CONFIG --candidates A,B,...`: the candidate backbones ranked on a
config's data (`kerastl.rank_backbones`), the table printed and written to a
new run directory."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from kerastl.app.schema import RunConfig

COLUMNS = ("rank", "name", "weights", "score", "probe_accuracy", "seconds", "parameters",
           "latency_ms", "image_size")  # fmt: skip
TABLE = "ranking.csv"


def parse_candidates(text: str) -> list[tuple[str, str | None]]:
    """`--candidates`: comma-separated registry names, each optionally `NAME@WEIGHTS`.

    Args:
        text: e.g. `"efficientnet-lite0,efficientnet-lite2,efficientnet-lite0@none"`
            (`@none`: random initialisation, the floor a real candidate beats).

    Returns:
        `(name, weights)` pairs; weights `"default"` where none is given.

    Raises:
        ValueError: an empty list or an empty name.

    Example:
        >>> parse_candidates("efficientnet-lite0,efficientnet-lite0@none")
        [('efficientnet-lite0', 'default'), ('efficientnet-lite0', None)]
    """
    pairs = []
    for item in text.split(","):
        name, _, weights = item.strip().partition("@")
        if not name:
            raise ValueError(
                "--candidates must be comma-separated registry names, each optionally "
                f"NAME@WEIGHTS (e.g. efficientnet-lite0,efficientnet-lite2). Received: {text!r}."
            )
        weights = weights or "default"
        pairs.append((name, None if weights.lower() == "none" else weights))
    return pairs


def rank(
    config: RunConfig,
    candidates: Sequence[tuple[str, str | None]],
    verbose: int | str = "auto",
    *,
    own_sizes: bool = False,
) -> tuple[list[dict], str]:
    """Ranks `candidates` on the config's training and validation data.

    Images are ranked at `model.image_size`, texts at `model.sequence_length`,
    pooled as `model.pooling` says;
    with `data.augment` and `train.cache_views`, on those views of the
    training data (what a cached stage trains on).

    Args:
        config: the run configuration (its data, sizes, augmentation and seed).
        candidates: `(name, weights)` pairs (`parse_candidates`).
        verbose: `0` silent; else the image folder check's progress (`1` a
            bar, `2` lines, `"auto"` a bar on a terminal and lines in a log, as
            `kerastl train`), a line per source that skipped records and per
            note on the data, and a line per candidate.
        own_sizes: rank each image candidate at its own input size (the
            images read at `model.image_size`, then resized).

    Returns:
        `(rows best first, path of the written ranking.csv)`.

    Example:
        >>> rows, path = rank(load_config("recipes/image_classification.yaml"),
        ...                   parse_candidates("efficientnet-lite0,efficientnet-lite2"))
    """
    from kerastl.app.data import load_data
    from kerastl.data.augment import augmentation, views_of
    from kerastl.training.ranking import checked_candidates, rank_backbones
    from kerastl.training.run_directory import new_run_directory

    candidates = checked_candidates(candidates)  # a bad name fails before the data is read
    data = load_data(config, tokenize=False, verbose=verbose)
    for line in data.console_lines() if verbose else []:
        print(f"kerastl: {line}", flush=True)
    views = None
    if config.data.augment and config.train.cache_views:
        policy = augmentation(config.data.augment, seed=config.train.seed)
        views = views_of(policy, config.train.cache_views, seed=config.train.seed)
    rows = rank_backbones(
        data.train,
        data.validation,
        candidates,
        image_size=None if own_sizes else config.model.image_size,
        sequence_length=config.model.sequence_length,
        pooling=config.model.pooling,
        views=views,
        verbose=1 if verbose else 0,
    )
    run_dir = new_run_directory(config.output_dir, f"{config.name}-rank")
    path = os.path.join(run_dir, TABLE)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        for place, row in enumerate(rows, 1):
            writer.writerow({"rank": place, **row, "weights": row["weights"] or "none"})
    return rows, path


def format_table(rows: Sequence[dict]) -> str:
    """The ranking as aligned text, best first.

    Args:
        rows: `rank_backbones` rows.

    Returns:
        The table, one line per candidate under a header.

    Example:
        >>> print(format_table(rows))
        rank  backbone                   LogME  probe acc  seconds  params (M)  latency (ms)
        1     efficientnet-lite0        -0.412      0.845     21.3        3.41          6.20
    """
    header = (
        f"{'rank':<5} {'backbone':<34} {'LogME':>8} {'probe acc':>10} {'seconds':>8} "
        f"{'params (M)':>11} {'latency (ms)':>13}"
    )
    lines = [header]
    for place, row in enumerate(rows, 1):
        weights = row["weights"] or "none"
        name = row["name"] if weights == "default" else f"{row['name']}@{weights}"
        lines.append(
            f"{place:<5} {name:<34} {row['score']:>8.4f} {row['probe_accuracy']:>10.4f} "
            f"{row['seconds']:>8.1f} {row['parameters'] / 1e6:>11.2f} {row['latency_ms']:>13.2f}"
        )
    return "\n".join(lines)
