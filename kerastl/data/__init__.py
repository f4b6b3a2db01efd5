"""Data: the bundled offline datasets as TFDS builders, and loading from TFDS.

Example:
    >>> import kerastl.data  # registers `elpv` and `rotten_tomatoes` with TFDS
    >>> train = tfds.load("elpv", split="train", as_supervised=True)
    >>> train = kerastl.data.load_tfds("elpv", "train")  # the same, failing fast offline
"""

from kerastl.data.builders import Elpv, RottenTomatoes, stratified_split
from kerastl.data.tfds_source import load_tfds

__all__ = ["Elpv", "RottenTomatoes", "load_tfds", "stratified_split"]
