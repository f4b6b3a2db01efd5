"""A model's WordPiece preprocessor in core TensorFlow ops, for stock TF Serving.

KerasHub's `WordPieceTokenizer` (BERT, DistilBERT, MiniLM...) and its packer
run TF-Text kernels (`RegexSplitWithOffsets`, `CaseFoldUTF8`,
`FastWordpieceTokenizeWithOffsets`, `RoundRobinTrim`) that the TF Serving
binary does not link. `CoreWordPiece` computes the same token ids from the
same vocabulary and settings with `tf.strings`, `tf.lookup` and a
`tf.while_loop` only:

1. CJK ideographs set apart (`tf.strings.regex_replace`, the tokenizer's own
   RE2 pattern);
2. accents stripped when the tokenizer strips them (ICU's NFD per code point,
   canonical reordering, then `\\p{Mn}` removed);
3. split on whitespace, control and format characters, punctuation and CJK
   kept as words (the same RE2 classes, then `tf.strings.split`); like
   `tf_text.regex_split`, a string ends at its first NUL character;
4. lower-cased when the tokenizer lower-cases (ICU's NFKC_Casefold per code
   point, with UAX #15 composition on the words that need it: see
   `unicode_tables`);
5. greedy longest-match-first WordPiece over a `tf.lookup` table of the
   vocabulary (words over 100 bytes, or with no full match, become the
   unknown token, as in `tf_text.FastWordpieceTokenizer`);
6. `[CLS] ... [SEP]`, truncated to the preprocessor's `sequence_length` and
   padded to the longest sequence of the batch (not to `sequence_length`:
   short requests run short).

Strings must be valid UTF-8 (the signature fails the request otherwise).
SentencePiece (DeBERTa) and byte-level BPE (RoBERTa) tokenizers are not
WordPiece: `unsupported_reason` says why a preprocessor cannot be converted.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kerastl.export import unicode_tables

# The word-splitting patterns of keras_hub.src.tokenizers.word_piece_tokenizer (RE2).
_DELIMITER = r"\s|\p{Cc}|\p{Cf}"
_PUNCTUATION = r"[!-/]|[:-@]|[\[-`]|[{-~]|[\p{P}]"
_CJK = (
    r"[\x{4E00}-\x{9FFF}]|[\x{3400}-\x{4DBF}]|[\x{20000}-\x{2A6DF}]|[\x{2A700}-\x{2B73F}]"
    r"|[\x{2B740}-\x{2B81F}]|[\x{2B820}-\x{2CEAF}]|[\x{F900}-\x{FAFF}]|[\x{2F800}-\x{2FA1F}]"
)
MAX_BYTES_PER_WORD = 100  # tf_text.FastWordpieceTokenizer's default, which KerasHub keeps
_PAIR_SHIFT = 2**21


def unsupported_reason(preprocessor) -> str | None:
    """Why `preprocessor` cannot be run in core ops (None when it can).

    Args:
        preprocessor: a KerasHub text preprocessor (`model.preprocessor`).

    Returns:
        None for a single-segment preprocessor around a `WordPieceTokenizer`
        that splits its input and emits integer ids; else the reason.

    Example:
        >>> unsupported_reason(minilm.preprocessor) is None
        True
    """
    from keras_hub.tokenizers import WordPieceTokenizer

    tokenizer = getattr(preprocessor, "tokenizer", None)
    if not isinstance(tokenizer, WordPieceTokenizer):
        return (
            f"its tokenizer is a {type(tokenizer).__name__}, not a WordPieceTokenizer "
            "(SentencePiece and byte-level BPE need TF-Text kernels)"
        )
    if not tokenizer.split or tokenizer.special_tokens_in_strings:
        return "it tokenizes pre-split words or special tokens written in the strings"
    if not np.issubdtype(np.dtype(tokenizer.compute_dtype), np.integer):
        return f"its tokenizer emits {tokenizer.compute_dtype} tokens, not ids"
    if not getattr(preprocessor, "sequence_length", None):
        return "it has no `sequence_length`"
    return None


class CoreWordPiece(tf.Module):
    """Raw strings → the token inputs of a WordPiece model, in core TF ops.

    Args:
        preprocessor: the model's KerasHub text preprocessor (its tokenizer's
            vocabulary, lower-casing, accent stripping, CJK splitting, special
            tokens and `sequence_length` are read from it).

    Example:
        >>> tokenize = CoreWordPiece(model.preprocessor)
        >>> tokenize(tf.constant(["a gripping film"]))["token_ids"]
        <tf.Tensor: shape=(1, 5), dtype=int32, numpy=array([[ 101, 1037, 13940, 2143, 102]]...)>
    """

    def __init__(self, preprocessor):
        reason = unsupported_reason(preprocessor)
        if reason is not None:
            raise ValueError(f"This preprocessor cannot run in core TensorFlow ops: {reason}.")
        super().__init__(name="core_word_piece")
        tokenizer = preprocessor.tokenizer
        self.sequence_length = int(preprocessor.sequence_length)
        self.lowercase = bool(tokenizer.lowercase)
        self.strip_accents = bool(tokenizer.strip_accents)
        self.split_on_cjk = bool(tokenizer.split_on_cjk)
        self.start_id = int(tokenizer.start_token_id)
        self.end_id = int(tokenizer.end_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        vocabulary = list(tokenizer.vocabulary)
        self.unknown_id = vocabulary.index(tokenizer.oov_token)
        self.suffix = tokenizer.suffix_indicator
        self._vocabulary = _string_table(vocabulary)
        self.longest_piece = max(
            len(token.encode()) - (len(self.suffix) if token.startswith(self.suffix) else 0)
            for token in vocabulary
        )
        self._classes = _int_table(*unicode_tables.combining_classes(), default=0)
        if self.strip_accents or self.lowercase:
            self._decompose = _CodepointMapper(unicode_tables.decomposition_map(), "decompose")
        if self.lowercase:
            self._case_fold = _CodepointMapper(unicode_tables.case_fold_map(), "case_fold")
            pair_keys, composites = unicode_tables.compositions()
            self._compose = _int_table(pair_keys, composites, default=-1)
            # Code points that can compose with the one before them (NFC_Quick_Check "maybe").
            seconds = np.unique(pair_keys % _PAIR_SHIFT).astype(np.int32)
            self._seconds = _int_table(seconds, np.ones_like(seconds), default=0)

    def __call__(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        """Tokenizes a `[batch]` `tf.string` tensor.

        Returns:
            `token_ids`, `padding_mask` and `segment_ids`: int32
            `[batch, length]`, `length` the longest packed sequence of the
            batch (at most `sequence_length`).
        """
        # Decoded strictly and encoded again: fails the call on invalid UTF-8
        # (a control dependency on the check alone is pruned from the graph).
        text = tf.strings.unicode_encode(
            tf.strings.unicode_decode(text, "UTF-8", errors="strict"), "UTF-8"
        )
        if self.split_on_cjk:
            text = tf.strings.regex_replace(text, _CJK, r" \0 ")
        if self.strip_accents:
            code_points = self._decompose(tf.strings.unicode_decode(text, "UTF-8"))
            code_points = _on_rows(self._has_marks(code_points), self._reorder, code_points)
            text = tf.strings.regex_replace(
                tf.strings.unicode_encode(code_points, "UTF-8"), r"\p{Mn}", ""
            )
        words = self._split(text)
        flat = words.flat_values
        if self.lowercase:
            flat = self._fold_case(flat)
        words = words.with_flat_values(flat)
        words = tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)
        words = words[:, : self.sequence_length - 2]  # every word gives at least one token
        pieces = tf.RaggedTensor.from_row_splits(
            self._word_pieces(words.flat_values), words.row_splits
        )
        return self._pack(pieces.merge_dims(1, 2))

    def _split(self, text):
        keep = f"{_PUNCTUATION}|{_CJK}" if self.split_on_cjk else _PUNCTUATION
        # A string ends at its first NUL, as in tf_text.regex_split (it reads C strings).
        text = tf.strings.regex_replace(text, r"(?s)\x00.*", "")
        text = tf.strings.regex_replace(text, _DELIMITER, " ")
        text = tf.strings.regex_replace(text, keep, r" \0 ")
        words = tf.strings.split(text, sep=" ")
        return tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)

    def _fold_case(self, words):
        """NFKC_Casefold of each word: per code point, then NFC where that is not exact."""
        code_points = self._case_fold(tf.strings.unicode_decode(words, "UTF-8"))
        combines = (_lookup(self._classes, code_points) > 0) | (
            _lookup(self._seconds, code_points) > 0
        )
        code_points = _on_rows(_any_in_row(combines), self._nfc, code_points)
        return tf.strings.unicode_encode(code_points, "UTF-8")

    def _has_marks(self, code_points):
        return _any_in_row(_lookup(self._classes, code_points) > 0)

    def _nfc(self, code_points):
        return self._composed(self._reorder(self._decompose(code_points)))

    def _reorder(self, code_points):
        """Canonical ordering: each run of combining marks stably sorted by class."""
        dense = code_points.to_tensor(default_value=-1)
        classes = _lookup(self._classes, dense)
        length = tf.cast(tf.shape(dense)[1], tf.int64)
        group = tf.cumsum(tf.cast(classes == 0, tf.int64), axis=1)
        position = tf.range(length)[None, :]
        key = (group * 256 + tf.cast(classes, tf.int64)) * length + position
        key = tf.where(dense >= 0, key, tf.int64.max - length + position)
        order = tf.argsort(key, axis=1, stable=True)
        ordered = tf.gather(dense, order, batch_dims=1)
        return tf.RaggedTensor.from_tensor(ordered, lengths=code_points.row_lengths())

    def _composed(self, code_points):
        """UAX #15 canonical composition of canonically ordered rows, all rows at once."""
        dense = tf.pad(code_points.to_tensor(default_value=0), [[0, 0], [0, 1]])  # >= 1 column
        classes = _lookup(self._classes, dense)
        lengths = tf.cast(code_points.row_lengths(), tf.int32)
        rows = tf.range(tf.shape(dense)[0])
        starter = tf.zeros_like(lengths)
        last_class = tf.where(classes[:, 0] == 0, 0, 256)
        written = tf.minimum(lengths, 1)

        def step(i, out, written, starter, last_class):
            char, char_class = dense[:, i], classes[:, i]
            starter_char = tf.gather(out, starter, batch_dims=1)
            key = tf.cast(starter_char, tf.int64) * _PAIR_SHIFT + tf.cast(char, tf.int64)
            composite = _lookup(self._compose, key)
            active = i < lengths
            merge = active & (composite >= 0) & ((last_class < char_class) | (last_class == 0))
            append = active & ~merge
            target = tf.where(merge, starter, written)
            value = tf.where(merge, composite, char)
            chosen = tf.where(active)[:, 0]
            indices = tf.stack([tf.gather(rows, chosen), tf.gather(target, chosen)], axis=1)
            out = tf.tensor_scatter_nd_update(out, indices, tf.gather(value, chosen))
            starter = tf.where(append & (char_class == 0), written, starter)
            last_class = tf.where(append, char_class, last_class)
            written = tf.where(append, written + 1, written)
            return i + 1, out, written, starter, last_class

        _, out, written, _, _ = tf.while_loop(
            lambda i, *_: i < tf.shape(dense)[1],
            step,
            (tf.constant(1), dense, written, starter, last_class),
        )
        return tf.RaggedTensor.from_tensor(out, lengths=tf.cast(written, tf.int64))

    def _word_pieces(self, words):
        """Greedy longest-match-first WordPiece of each word: `[words, (pieces)]` int32."""
        whole = self._vocabulary.lookup(words)
        in_vocabulary = (whole >= 0) & (tf.strings.length(words) <= MAX_BYTES_PER_WORD)
        pieces = tf.RaggedTensor.from_tensor(whole[:, None])  # most words are one piece
        return _on_rows(~in_vocabulary, self._greedy, pieces, words)

    def _greedy(self, words):
        """WordPiece by the longest vocabulary match at each position, all words at once."""
        count = tf.size(words)
        lengths = tf.strings.length(words)
        too_long = lengths > MAX_BYTES_PER_WORD
        width = self.longest_piece
        widths = tf.tile(tf.range(width, 0, -1)[None, :], [count, 1])  # longest candidate first
        candidates = tf.tile(words[:, None], [1, width])

        def step(start, done, failed, emitted):
            pieces = tf.strings.substr(candidates, tf.tile(start[:, None], [1, width]), widths)
            prefix = tf.tile(tf.where(start > 0, self.suffix, "")[:, None], [1, width])
            ids = self._vocabulary.lookup(tf.strings.join([prefix, pieces]))
            found = ids >= 0
            matched = tf.reduce_any(found, axis=1) & ~done
            best = tf.argmax(tf.cast(found, tf.int32), axis=1, output_type=tf.int32)
            piece_id = tf.gather(ids, best, batch_dims=1)
            piece_length = tf.strings.length(tf.gather(pieces, best, batch_dims=1))
            emitted = emitted.write(emitted.size(), tf.where(matched, piece_id, -1))
            failed |= ~done & ~matched
            start = tf.where(matched, start + piece_length, start)
            done |= ~matched | (start >= lengths)
            return start, done, failed, emitted

        _, _, failed, emitted = tf.while_loop(
            lambda start, done, *_: ~tf.reduce_all(done),
            step,
            (
                tf.zeros_like(lengths),
                too_long | (lengths == 0),
                too_long,
                # A first row of nothing, so that a batch of no pieces stacks too.
                tf.TensorArray(tf.int32, size=1, dynamic_size=True).write(0, tf.fill([count], -1)),
            ),
        )
        steps = tf.transpose(emitted.stack())  # [words, 1 + steps]
        unknown = tf.where(failed, self.unknown_id, -1)[:, None]
        ids = tf.concat([unknown, tf.where(failed[:, None], -1, steps)], axis=1)
        return tf.ragged.boolean_mask(ids, ids >= 0)

    def _pack(self, tokens):
        tokens = tokens[:, : self.sequence_length - 2]
        ends = tf.RaggedTensor.from_tensor(tf.ones([tokens.nrows(), 1], tf.int32))
        packed = tf.concat([ends * self.start_id, tokens, ends * self.end_id], axis=1)
        token_ids = packed.to_tensor(default_value=self.pad_id)
        return {
            "token_ids": token_ids,
            "padding_mask": tf.cast(token_ids != self.pad_id, tf.int32),
            "segment_ids": tf.zeros_like(token_ids),
        }


class _CodepointMapper(tf.Module):
    """Maps each code point of `[rows, (code points)]` to its `CodepointMap` replacement."""

    def __init__(self, table: unicode_tables.CodepointMap, name: str):
        super().__init__(name=name)
        self._index = _int_table(table.keys, np.arange(len(table), dtype=np.int32), default=-1)
        self._starts = tf.constant(table.splits[:-1], tf.int32)
        self._lengths = tf.constant(np.diff(table.splits).astype(np.int32))
        self._values = tf.constant(np.append(table.values, 0).astype(np.int32))  # never empty

    def __call__(self, code_points: tf.RaggedTensor) -> tf.RaggedTensor:
        flat = code_points.flat_values
        index = _lookup(self._index, flat)
        mapped = index >= 0
        row = tf.maximum(index, 0)
        lengths = tf.where(mapped, tf.gather(self._lengths, row), 1)
        splits = tf.concat([[0], tf.cumsum(lengths)], axis=0)
        owner = tf.repeat(tf.range(tf.size(flat)), lengths)
        offset = tf.range(splits[-1]) - tf.gather(splits, owner)
        replaced = tf.gather(self._values, tf.gather(tf.gather(self._starts, row), owner) + offset)
        values = tf.where(tf.gather(mapped, owner), replaced, tf.gather(flat, owner))
        row_splits = tf.gather(splits, tf.cast(code_points.row_splits, tf.int32))
        return tf.RaggedTensor.from_row_splits(values, tf.cast(row_splits, tf.int64))


def _on_rows(selected, function, rows: tf.RaggedTensor, inputs=None) -> tf.RaggedTensor:
    """`rows` with the `selected` ones replaced by `function` of them (or of the
    same rows of `inputs`, when given); `function` does not run when none is."""

    def replaced():
        chosen = tf.where(selected)[:, 0]
        others = tf.where(~selected)[:, 0]
        changed = function(tf.gather(rows if inputs is None else inputs, chosen))
        merged = tf.concat([tf.gather(rows, others), changed], axis=0)
        order = tf.math.invert_permutation(tf.cast(tf.concat([others, chosen], axis=0), tf.int32))
        return tf.gather(merged, order)

    return tf.cond(tf.reduce_any(selected), replaced, lambda: rows)


def _any_in_row(flags: tf.RaggedTensor) -> tf.Tensor:
    """Whether each row of a ragged boolean tensor holds a True (empty rows: False)."""
    return tf.reduce_max(tf.cast(flags, tf.int32), axis=1) > 0


def _lookup(table: tf.lookup.StaticHashTable, keys):
    """`table` (int64 keys) looked up with int32 code points, a ragged tensor's too."""
    if isinstance(keys, tf.RaggedTensor):
        return keys.with_flat_values(_lookup(table, keys.flat_values))
    return table.lookup(tf.cast(keys, tf.int64))


def _int_table(keys, values, default: int) -> tf.lookup.StaticHashTable:
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(np.asarray(keys), tf.int64), tf.constant(np.asarray(values), tf.int32)
        ),
        default_value=default,
    )


def _string_table(vocabulary: list[str]) -> tf.lookup.StaticHashTable:
    first = {}
    for index, token in enumerate(vocabulary):
        first.setdefault(token, index)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(first)), tf.constant(list(first.values()), tf.int32)
        ),
        default_value=-1,
    )
