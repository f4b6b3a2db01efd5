"""An image folder's up-front check: one file after another against `image_folder`.

`kerastl.data.image_folder` decodes every file once before training, to skip
and name the bad ones. It used to decode them one after another; it now hands
them to a thread per core (TF's decoders release the GIL). This script writes
a folder of phone-sized JPEGs (4000x3000, from scikit-image's astronaut with
noise, ~5 MB each) and times, alternating, the same check file by file (the
old loop) and `image_folder` itself; it prints the median of the rounds and
the ratio.

Usage:
    .venv/bin/python bench/folder_check.py [--photos 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
from PIL import Image

import kerastl.data
from kerastl.data import images as images_module

PHOTO = (3000, 4000)  # a 12-megapixel phone photo, height x width


def write_photos(root: str, count: int) -> None:
    """`count` JPEGs in two class folders: the astronaut at `PHOTO`, shifted, with noise."""
    skimage = importlib.util.find_spec("skimage").submodule_search_locations[0]
    source = os.path.join(skimage, "data", "astronaut.png")  # read without importing it
    base = np.asarray(Image.open(source).convert("RGB").resize(PHOTO[::-1]), dtype=np.int16)
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = os.path.join(root, "ab"[index % 2])
        os.makedirs(folder, exist_ok=True)
        pixels = np.roll(base, 50 * index, axis=1) + rng.integers(0, 40, base.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        image.save(os.path.join(folder, f"{index}.jpg"), quality=92)


def one_after_another(root: str) -> int:
    """The old check: each file decoded in turn; returns the files kept."""
    paths = sorted(pathlib.Path(root).rglob("*.jpg"))
    return sum(images_module._check_image(path, tf) is None for path in paths)


def threaded(root: str) -> int:
    return kerastl.data.image_folder(root, (224, 224))[2].kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_photos(root, args.photos)
        ways = {"one file after another (before)": one_after_another, "image_folder": threaded}
        seconds = {name: [] for name in ways}
        for name, way in ways.items():  # warm: the decoders' first calls
            assert way(root) == args.photos, name
        for _ in range(args.rounds):
            for name, way in ways.items():
                started = time.perf_counter()
                way(root)
                seconds[name].append(time.perf_counter() - started)
    before = statistics.median(seconds["one file after another (before)"])
    print(f"{args.photos} JPEGs of {PHOTO[1]}x{PHOTO[0]}, {os.cpu_count()} cores, median of "
          f"{args.rounds} rounds")  # fmt: skip
    print("| check | seconds | ms a file | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in seconds.items():
        median = statistics.median(values)
        per_file = 1000 * median / args.photos
        print(f"| {name} | {median:.2f} | {per_file:.1f} | {before / median:.2f}x |")


if __name__ == "__main__":
    main()
