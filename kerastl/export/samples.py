"""Sample inputs for parity checks, warmup requests and example requests."""

from __future__ import annotations

import os

import numpy as np

from kerastl._atomic import write_atomically
from kerastl.export.signatures import is_text_model

DEFAULT_COUNT = 8
_TEXT_KEY = "text"


def model_samples(model, samples=None, count: int = DEFAULT_COUNT):
    """Normalizes samples to what `model` takes, or makes deterministic ones.

    Args:
        model: the model the samples are for.
        samples: images `[n, H, W, 3]` in [0, 255] (array or `tf.data` batches
            of `(images, labels)` or images); for text models raw strings
            (tokenized by the model's `preprocessor`) or a dict of token
            arrays (optionally with a `"text"` list of the raw strings). None:
            `count` random pixel images, or random token ids over the
            backbone's vocabulary.
        count: how many samples at most.

    Returns:
        A float32 array (images) or a dict of int32 arrays (tokens; `"text"`
        kept aside when given).
    """
    if samples is None:
        return (
            _random_tokens(model, count) if is_text_model(model) else _random_images(model, count)
        )
    if hasattr(samples, "take") and hasattr(samples, "element_spec"):
        samples = dataset_arrays(samples, count)[0]
    if is_text_model(model):
        if not isinstance(samples, dict):
            samples = _tokenized(model, samples, count)
        missing = [name for name in model.input if name not in samples]
        if missing:
            raise ValueError(f"Text samples lack the inputs {missing}. Received: {list(samples)}.")
        tokens = {name: np.asarray(samples[name], np.int32)[:count] for name in model.input}
        if "text" in samples:
            tokens["text"] = list(samples["text"])[:count]
        return tokens
    images = np.asarray(samples, np.float32)[:count]
    expected = tuple(model.input_shape[1:])
    fits = images.ndim == 4 and all(
        e in (None, a) for e, a in zip(expected, images.shape[1:], strict=True)
    )
    if not fits:
        raise ValueError(
            f"Image samples must have shape [n, {', '.join(map(str, expected))}]. "
            f"Received: shape={images.shape}."
        )
    return images


def save_samples(path: str | os.PathLike, samples) -> str:
    """Writes normalized samples (`model_samples`) to an `.npz` file, atomically.

    A run directory keeps a few validation inputs so that `kerastl export`
    needs nothing but the directory. Raw strings are stored as Unicode, so
    the file loads without pickle.

    Args:
        path: the file, ending in `.npz`.
        samples: an image array, or a dict of token arrays (with `"text"`).

    Returns:
        The path written.

    Example:
        >>> save_samples("runs/x/samples.npz", model_samples(model, val_ds))
        'runs/x/samples.npz'
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"`path` must end in '.npz'. Received: path={path!r}.")
    arrays = dict(samples) if isinstance(samples, dict) else {"images": samples}
    if _TEXT_KEY in arrays:
        arrays[_TEXT_KEY] = np.array([_as_str(text) for text in arrays[_TEXT_KEY]], dtype=str)
    write_atomically(path, lambda temporary: np.savez(temporary, **arrays))
    return path


def load_samples(path: str | os.PathLike):
    """Reads samples written by `save_samples` (None if there is no file).

    Example:
        >>> load_samples("runs/x/samples.npz").shape
        (8, 128, 128, 3)
    """
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    if list(arrays) == ["images"]:
        return arrays["images"]
    if _TEXT_KEY in arrays:
        arrays[_TEXT_KEY] = [str(text) for text in arrays[_TEXT_KEY]]
    return arrays


def detokenized(preprocessor, samples) -> list[str]:
    """Token samples written back as text (special tokens and padding dropped),
    for the `text` signature's checks and warmup requests when no raw strings came."""
    tokenizer = preprocessor.tokenizer
    special = set(getattr(tokenizer, "special_token_ids", None) or [])
    mask = samples.get("padding_mask", np.ones_like(samples["token_ids"]))
    texts = []
    for ids, keep in zip(samples["token_ids"], mask, strict=True):
        ids = [int(i) for i, k in zip(ids, keep, strict=True) if k and int(i) not in special]
        text = np.asarray(tokenizer.detokenize([ids])).reshape(-1)[0] if ids else ""
        texts.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
    return texts


def _as_str(text) -> str:
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def whole_pixels(images) -> np.ndarray:
    """Images rounded and clipped to uint8 pixels (what JPEG/PNG and uint8 inputs carry)."""
    return np.clip(np.round(np.asarray(images)), 0, 255).astype(np.uint8)


def model_inputs(samples):
    """The part of normalized samples that the Keras model itself takes."""
    if isinstance(samples, dict):
        return {name: value for name, value in samples.items() if name != "text"}
    return samples


def sample_count(samples) -> int:
    """How many examples normalized samples hold."""
    first = next(iter(model_inputs(samples).values())) if isinstance(samples, dict) else samples
    return len(first)


def _tokenized(model, texts, count: int) -> dict:
    """Raw strings as the model's token inputs, the strings kept under `"text"`."""
    from kerastl.backbones.tokenizers import tokenize

    array = np.asarray(texts)
    if array.ndim != 1 or array.dtype.kind not in "USO":
        raise TypeError(
            "Text samples must be raw strings or a dict of token arrays "
            f"({list(model.input)}). Received: {type(texts).__name__} of shape {array.shape}."
        )
    if getattr(model, "preprocessor", None) is None:
        raise TypeError(
            "Raw-string samples need the model's tokenizer (`preprocessor`), and this model has "
            f"none: pass a dict of token arrays ({list(model.input)})."
        )
    strings = [_as_str(text) for text in array[:count]]
    tokens = tokenize(model.preprocessor, strings)
    return {name: np.asarray(tokens[name]) for name in model.input} | {_TEXT_KEY: strings}


def dataset_arrays(dataset, count: int):
    """The first `count` examples (whole batches) of a `tf.data` dataset as arrays.

    Args:
        dataset: batches of `inputs` or `(inputs, labels, ...)`.
        count: how many examples to read at least (the last batch is kept whole).

    Returns:
        `(inputs, labels)`: an array or a dict of arrays (token batches of
        different lengths padded to one), and the labels (None without them).
    """
    batches, labels = [], []
    taken = 0
    for element in dataset:
        features = element[0] if isinstance(element, tuple) else element
        batches.append(features)
        if isinstance(element, tuple) and len(element) > 1:
            labels.append(np.asarray(element[1]))
        taken += len(next(iter(features.values())) if isinstance(features, dict) else features)
        if taken >= count:
            break
    if not batches:
        raise ValueError("The sample dataset is empty.")
    if isinstance(batches[0], dict):
        inputs = {
            key: _concatenate_padded([np.asarray(b[key]) for b in batches]) for key in batches[0]
        }
    else:
        inputs = np.concatenate([np.asarray(b) for b in batches])
    return inputs, (np.concatenate(labels) if labels else None)


def _concatenate_padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenates token batches padded to different lengths (length-bucketed
    pipelines), padding with zeros: a zero `padding_mask` marks the padding."""
    length = max(array.shape[1] for array in arrays) if arrays[0].ndim > 1 else None
    if length is not None:
        arrays = [np.pad(a, [(0, 0), (0, length - a.shape[1])]) for a in arrays]
    return np.concatenate(arrays)


def _random_images(model, count: int):
    shape = (count, *model.input_shape[1:])
    return np.random.RandomState(0).uniform(0, 255, shape).astype(np.float32)


def _random_tokens(model, count: int, length: int = 16):
    vocabulary = int(getattr(getattr(model, "backbone", None), "vocabulary_size", 100) or 100)
    random = np.random.RandomState(0)
    tokens = {}
    for name in model.input:
        if name == "padding_mask":
            mask = np.ones((count, length), np.int32)
            mask[:, length // 2 :] = random.randint(0, 2, (count, 1))  # some padded
            tokens[name] = mask
        elif name == "segment_ids":
            tokens[name] = np.zeros((count, length), np.int32)
        else:
            tokens[name] = random.randint(1, vocabulary, (count, length)).astype(np.int32)
    return tokens
