"""Data sources: TFDS (with the two bundled offline datasets), image folders,
text tables, NumPy arrays; bad records are skipped and reported, or raise with
`strict=True`. Pipelines: image preparation, batching, text batches by length.

Example:
    >>> import kerastl.data  # registers `elpv` and `rotten_tomatoes` with TFDS
    >>> train = tfds.load("elpv", split="train", as_supervised=True)
    >>> train = kerastl.data.load_tfds("elpv", "train")  # the same, failing fast offline
"""

from kerastl.data.augment import (
    RandomDihedral,
    augmentation,
    dihedral_view,
    label_mixing,
    tta_views,
    views_of,
)
from kerastl.data.builders import Elpv, RottenTomatoes, stratified_split
from kerastl.data.images import image_folder
from kerastl.data.pipeline import (
    batched,
    from_arrays,
    prepare_images,
    text_batches,
)
from kerastl.data.report import BadRecordError, DataReport
from kerastl.data.text import text_table
from kerastl.data.tfds_source import load_tfds

__all__ = [
    "BadRecordError",
    "DataReport",
    "Elpv",
    "RandomDihedral",
    "RottenTomatoes",
    "augmentation",
    "batched",
    "dihedral_view",
    "from_arrays",
    "image_folder",
    "label_mixing",
    "load_tfds",
    "prepare_images",
    "stratified_split",
    "text_batches",
    "text_table",
    "tta_views",
    "views_of",
]
