"""ICU's Unicode normalization, per code point, as tables for core TensorFlow ops.

KerasHub's WordPiece tokenizers normalize with TF-Text, which calls ICU:
`case_fold_utf8` (NFKC_Casefold) and `normalize_utf8(..., "NFD")`. Core
TensorFlow has no normalization op, so the core-op tokenizer
(`kerastl.export.core_tokenizer`) maps code points through these tables,
which are ICU's own answers (asked through TF-Text once per process, ~0.5 s),
not a second Unicode database that could disagree with the one the model
trained with:

- `case_fold_map`: each code point's NFKC_Casefold, alone.
- `decomposition_map`: each code point's canonical decomposition (NFD).
- `compositions`: the primary composites, as (first, second) → composite,
  read back from ICU's NFC of each decomposition.
- `combining_classes`: canonical combining classes (Python's `unicodedata`:
  ICU does not expose them to Python, and assigned classes never change).

Normalizing a string is not a per-code-point map in general: NFC composes
across code points (`e` + U+0301 → `é`) and reorders combining marks. The
tokenizer uses the tables per code point where that is exact and runs the
composition algorithm of UAX #15 on the words where it is not.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

import numpy as np

SURROGATES = range(0xD800, 0xE000)


@dataclass(frozen=True)
class CodepointMap:
    """Code points whose normalization differs from themselves.

    Attributes:
        keys: the code points that change (int32, ascending).
        splits: `keys[i]` becomes `values[splits[i]:splits[i + 1]]` (can be empty).
        values: the replacement code points, concatenated.
    """

    keys: np.ndarray
    splits: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


@functools.cache
def _all_code_points() -> np.ndarray:
    every = np.arange(0x110000, dtype=np.int32)
    return every[(every < SURROGATES.start) | (every >= SURROGATES.stop)]


def _icu(function) -> CodepointMap:
    """`function` (strings → strings) applied to each code point alone, kept where it changes."""
    import tensorflow as tf

    code_points = _all_code_points()
    mapped = function(tf.strings.unicode_encode(code_points[:, None], "UTF-8"))
    decoded = tf.strings.unicode_decode(mapped, "UTF-8")
    lengths = decoded.row_lengths().numpy()
    values = decoded.flat_values.numpy()
    first = values[np.minimum(decoded.row_splits.numpy()[:-1], len(values) - 1)]
    changed = (lengths != 1) | (first != code_points)
    rows = tf.ragged.boolean_mask(decoded, tf.constant(changed))
    return CodepointMap(
        keys=code_points[changed],
        splits=rows.row_splits.numpy().astype(np.int32),
        values=rows.flat_values.numpy().astype(np.int32),
    )


@functools.cache
def case_fold_map() -> CodepointMap:
    """ICU's NFKC_Casefold of each code point (what `tf_text.case_fold_utf8` does).

    Example:
        >>> table = case_fold_map()
        >>> int(table.values[table.splits[list(table.keys).index(ord("A"))]])
        97
    """
    import tensorflow_text as tf_text

    return _icu(tf_text.case_fold_utf8)


@functools.cache
def decomposition_map() -> CodepointMap:
    """ICU's canonical decomposition (NFD) of each code point, Hangul syllables included."""
    import tensorflow_text as tf_text

    return _icu(lambda strings: tf_text.normalize_utf8(strings, "NFD"))


@functools.cache
def compositions() -> tuple[np.ndarray, np.ndarray]:
    """ICU's primary composites, as pairs.

    A code point with the canonical decomposition `d1 ... dn` (n >= 2) is
    composed of NFC(`d1 ... dn-1`) and `dn` when ICU's NFC of that pair gives
    it back (composition exclusions and singletons do not).

    Returns:
        `(pair_keys, composites)`: int64 keys `first * 2**21 + second`, and
        the int32 code point each pair composes to.
    """
    import tensorflow as tf
    import tensorflow_text as tf_text

    table = decomposition_map()
    lengths = np.diff(table.splits)
    candidates = table.keys[lengths >= 2]
    starts, ends = table.splits[:-1][lengths >= 2], table.splits[1:][lengths >= 2]
    heads = [table.values[start : end - 1] for start, end in zip(starts, ends, strict=True)]
    seconds = table.values[ends - 1]
    head_text = tf.strings.unicode_encode(tf.ragged.constant(heads, dtype=tf.int32), "UTF-8")
    firsts = tf.strings.unicode_decode(tf_text.normalize_utf8(head_text, "NFC"), "UTF-8")
    single = firsts.row_lengths().numpy() == 1
    firsts = firsts.flat_values.numpy()[np.cumsum(firsts.row_lengths().numpy()) - 1]
    pairs = tf.strings.unicode_encode(np.stack([firsts, seconds], axis=1), "UTF-8")
    composed = tf.strings.unicode_decode(tf_text.normalize_utf8(pairs, "NFC"), "UTF-8")
    back = composed.row_lengths().numpy() == 1
    back &= composed.to_tensor().numpy()[:, 0] == candidates
    keep = single & back
    keys = firsts[keep].astype(np.int64) * 2**21 + seconds[keep].astype(np.int64)
    return keys, candidates[keep].astype(np.int32)


@functools.cache
def combining_classes() -> tuple[np.ndarray, np.ndarray]:
    """The code points with a nonzero canonical combining class, and the classes (int32)."""
    code_points = np.array(
        [c for c in _all_code_points() if unicodedata.combining(chr(c))], np.int32
    )
    classes = np.array([unicodedata.combining(chr(c)) for c in code_points], np.int32)
    return code_points, classes
