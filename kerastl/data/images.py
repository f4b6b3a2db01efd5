"""Image folders (`root/<class>/<image>`) as datasets that survive bad files.

`keras.utils.image_dataset_from_directory` decodes inside the pipeline, so
one corrupt file stops training in the middle of an epoch. Here every file
is decoded once up front: unreadable or undecodable files and unusable
channel counts are skipped and named in a `DataReport` (or, with
`strict=True`, raise at once), and only good files reach the pipeline.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from pathlib import Path

import numpy as np

from kerastl.data.pipeline import resized_rgb
from kerastl.data.report import DataReport

# What `tf.io.decode_image` reads (WebP since TF 2.18; Keras's own folder
# reader still lists only the first five).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
USABLE_CHANNELS = (1, 3, 4)  # grey and RGBA become RGB


def image_folder(
    directory: str | os.PathLike,
    image_size: tuple[int, int],
    *,
    class_names: list[str] | None = None,
    strict: bool = False,
    verbose: int | str = 0,
):
    """Lists, checks and loads an image folder as `(image, label)` pairs.

    Images are decoded, converted to RGB and resized to `image_size` as the
    exported `image_bytes` signature resizes them (`resized_rgb`: bilinear,
    antialiased), as float32 pixels in [0, 255]: a `TransferModel`
    preprocesses them itself. Batch, shuffle and augment afterwards.

    Args:
        directory: a folder with one sub-folder per class.
        image_size: `(height, width)` of the output images.
        class_names: the classes, in label order (default: the sub-folders,
            sorted). A listed class without a folder is an error. Without
            it, sub-folders that look like splits (`train/`, `val/`, or the
            same class folders inside each) are refused.
        strict: raise `BadRecordError` at the first bad file instead of
            skipping it.
        verbose: progress of the check (every file decoded once, on all
            cores: a folder of phone photos takes about 50 ms a file), as
            in `kerastl.FineTuner`; 0: silent.

    Returns:
        `(dataset, class_names, report)`: a `tf.data.Dataset` of
        `(float32 [H, W, 3], int32)` pairs in a fixed file order, the class
        names, and the `DataReport` of what was skipped (its notes count the
        files of other types, not read: `IMAGE_EXTENSIONS` are).

    Example:
        >>> ds, names, report = kerastl.data.image_folder("flowers/", (224, 224))
        >>> print(report.summary())
    """
    import tensorflow as tf

    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder not found. Received: directory={os.fspath(directory)!r}."
        )
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if class_names is None:
        _refuse_split_folders(root, folders)
    names = list(class_names) if class_names is not None else folders
    missing = [name for name in names if name not in folders]
    if missing or not names:
        raise ValueError(
            f"Classes without a folder in {root}: {missing or 'no class folders at all'}. "
            f"Folders found: {folders}. Received: class_names={class_names!r}."
        )
    report = DataReport(source=str(root))
    ignored = [name for name in folders if name not in names]
    if ignored:
        report.notes.append(f"folders that are not classes, not read: {ignored}")
    candidates, other_types = [], collections.Counter()
    for label, name in enumerate(names):
        for path in sorted((root / name).rglob("*")):
            if not path.is_file():
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                candidates.append((path, label))
            elif not path.name.startswith("."):  # .DS_Store and the like
                other_types[path.suffix.lower() or "(no extension)"] += 1
    paths, labels = _checked(candidates, report, strict, verbose, f"checking the images in {root}")
    present = set(labels)
    for label, name in enumerate(names):
        if label not in present:
            report.notes.append(f"class {name!r} has no usable image in {root / name}")
    if other_types:
        kinds = ", ".join(f"{count} {suffix}" for suffix, count in sorted(other_types.items()))
        report.notes.append(
            f"files of other types, not read: {kinds} (read: {', '.join(IMAGE_EXTENSIONS)})"
        )
    report.kept = len(paths)
    height, width = image_size

    def load(path, label):
        contents = tf.io.read_file(path)
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
        return resized_rgb(image, (height, width)), label

    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(np.asarray(labels, "int32")))
    ).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset, names, report


def _checked(candidates, report: DataReport, strict: bool, verbose, what: str):
    """The `(paths, labels)` of the candidate `(path, label)` files that decode to
    usable images, in order; the others go to `report`. Decoded on a thread per
    core (TF's decoders release the GIL), a window of files at a time."""
    import tensorflow as tf

    from kerastl._progress import Progress

    progress = Progress(what, len(candidates), verbose, unit="image")
    paths, labels = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(candidates), _CHECK_WINDOW):
            window = candidates[start : start + _CHECK_WINDOW]
            reasons = pool.map(lambda path: _check_image(path, tf), [p for p, _ in window])
            for (path, label), reason in zip(window, reasons, strict=True):
                if reason:
                    report.reject(str(path), reason, strict)
                    continue
                paths.append(str(path))
                labels.append(label)
            progress.update(start + len(window))
    progress.finish()
    return paths, labels


_CHECK_WINDOW = 256  # files decoded before the next are handed out


SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "dev", "eval", "test", "testing")


def _refuse_split_folders(root: Path, folders: list[str]) -> None:
    """Raises when the sub-folders look like splits (`train/`, `val/`) rather than classes:
    named like splits, or holding the same sub-folders as each other (`train/cat`, `val/cat`)."""
    splits = [name for name in folders if name.lower() in SPLIT_NAMES]
    inner = {name: {p.name for p in (root / name).iterdir() if p.is_dir()} for name in folders}
    shared = sorted(set.intersection(*inner.values())) if len(inner) > 1 else []
    if not splits and not shared:
        return
    found = f"split folders {splits}" if splits else f"the same sub-folders {shared[:5]} in each"
    first = (splits or folders)[0]
    raise ValueError(
        f"{root} holds {found}, not one folder per class: training on it would use the "
        f"folder names {folders} as labels. Point the source at one split, e.g. "
        f"folder:{root / first} (kerastl train: data.validation_source / data.test_source "
        "for the others), or pass class_names to use these folders as classes. "
        f"Received: directory={os.fspath(root)!r}."
    )


def _check_image(path: Path, tf) -> str | None:
    """Why the file cannot be used, or None when it decodes to a usable image."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    if not data:
        return "corrupt: empty file"
    if problem := misread_bmp_reason(data):
        return problem
    try:
        image = tf.io.decode_image(data, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        message = str(error).splitlines()[0][:120]
        return f"corrupt: {message}"
    channels = int(image.shape[-1])
    if channels not in USABLE_CHANNELS:
        return f"wrong channels: {channels} (expected one of {USABLE_CHANNELS})"
    return None


def misread_bmp_reason(data: bytes) -> str | None:
    """Why TensorFlow would misread these encoded image bytes, a BMP of 8 bits or
    fewer per pixel, or None (any other image, read right).

    `tf.io.decode_bmp` reads an 8-bit BMP's palette indices as grey levels,
    so one with a colour palette decodes without an error into the wrong
    pixels; it fails on 1- and 4-bit BMPs. Only a grey palette (index i is
    grey level i) reads right.

    Args:
        data: the file's bytes.

    Returns:
        The reason (`"unsupported BMP: ..."`), or None.

    Example:
        >>> misread_bmp_reason(open("palette.bmp", "rb").read())
        'unsupported BMP: 8 bits per pixel with a colour palette, ...'
    """
    if data[:2] != b"BM":
        return None
    header = int.from_bytes(data[14:18], "little")
    if header < 40 or len(data) < 50:
        return None  # an OS/2 header or a truncated file: decode_image judges it
    bits = int.from_bytes(data[28:30], "little")
    if bits > 8:
        return None
    convert = "save it as PNG or as a 24-bit BMP"
    if bits < 8:
        plural = "s" if bits > 1 else ""
        return (
            f"unsupported BMP: {bits} bit{plural} per pixel (TensorFlow reads 8, 24 and 32; "
            f"{convert})"
        )
    count = min(int.from_bytes(data[46:50], "little") or 256, 256)
    if len(data) < 14 + header + 4 * count:
        return None  # truncated: decode_image judges it
    table = np.frombuffer(data, np.uint8, count=4 * count, offset=14 + header).reshape(count, 4)
    if np.array_equal(table[:, :3], np.repeat(np.arange(count, dtype=np.uint8)[:, None], 3, 1)):
        return None
    return (
        "unsupported BMP: 8 bits per pixel with a colour palette, whose indices TensorFlow "
        f"reads as grey levels ({convert})"
    )
