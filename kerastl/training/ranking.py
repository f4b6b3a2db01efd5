"""Which backbone to fine-tune: candidates ranked by how well their frozen
features fit the user's labels, in seconds per candidate instead of a
fine-tuning run each.

`rank_backbones` extracts each candidate's pooled features of the training
and validation data once (the feature cache's cut before the head), scores
the training features with LogME (You et al. 2021: the log marginal evidence
of a Bayesian linear model on the features, maximised in closed form per
class), and checks it with a linear probe's validation accuracy (ridge on
one-hot targets, its penalty chosen by leave-one-out on the training data).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import keras
import numpy as np

METHODS = ("logme",)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the mean per-example log evidence of a linear model on `features`.

    For each class, the evidence of a Bayesian linear regression from the
    features to the class's indicator, with its prior and noise precisions
    (alpha, beta) set by the fixed-point updates of You et al. (2021); the
    score is the mean over classes, divided by the examples. Higher is better;
    it compares backbones on the same data, not data sets.

    Args:
        features: `[n, d]` frozen features.
        labels: `[n]` integer classes.

    Returns:
        The score.

    Example:
        >>> logme(np.random.default_rng(0).normal(size=(100, 8)), np.arange(100) % 2)
        -1.4...
    """
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels).reshape(-1)
    n, d = f.shape
    _, s, vt = np.linalg.svd(f, full_matrices=False)
    sigma = s**2  # eigenvalues of f.T @ f on its range; the other d - r are 0
    scores = []
    for label in np.unique(labels):
        y = (labels == label).astype(np.float64)
        projected = vt @ (f.T @ y)
        alpha = beta = 1.0
        for _ in range(11):
            shrink = beta / (alpha + beta * sigma)
            gamma = float((beta * sigma / (alpha + beta * sigma)).sum())
            m = vt.T @ (projected * shrink)
            alpha_de = float(m @ m) + 1e-5
            beta_de = float(((y - f @ m) ** 2).sum()) + 1e-5
            new_alpha, new_beta = gamma / alpha_de, (n - gamma) / beta_de
            converged = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        log_det = np.log(alpha + beta * sigma).sum() + (d - len(sigma)) * math.log(alpha)
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - 0.5 * log_det
            - beta / 2 * beta_de
            - alpha / 2 * alpha_de
            - n / 2 * math.log(2 * math.pi)
        )
        scores.append(evidence / n)
    return float(np.mean(scores))


def rank_backbones(
    train,
    validation,
    candidates: Sequence,
    *,
    image_size: int | None = None,
    sequence_length: int = 128,
    pooling: str | None = None,
    views=None,
    method: str = "logme",
    verbose: int = 1,
) -> list[dict]:
    """Ranks candidate backbones by their frozen features on `train`, best first.

    Args:
        train: batches of `(inputs, integer labels)`: raw pixels `[b, H, W, 3]`
            (resized to each candidate's size) or raw strings for text
            (tokenized by each candidate's own preprocessor). Any order: the
            labels are read in the same pass as the features.
        validation: the same, for the linear probe's accuracy.
        candidates: registry names, or `(name, weights)` pairs (`weights=None`:
            random initialisation, a floor every real candidate should beat),
            all of one modality.
        image_size: the side images are resized to (default: each
            candidate's own input size).
        sequence_length: the most tokens per text.
        pooling: the features' pooling, as `TransferModel` takes it (default:
            the backbone's own).
        views: the training data's augmentation as fixed views
            (`kerastl.data.views_of`): LogME scores the features of every view
            of every training example (what the head trains on), the probe
            their mean per example. `None`: the inputs as they are.
        method: `"logme"`.
        verbose: `1` a line per candidate, `0` silent.

    Returns:
        One row per candidate, highest `score` first: `name`, `weights`,
        `score`, `probe_accuracy` (a ridge probe on the training features,
        its penalty chosen by leave-one-out, scored on validation),
        `seconds` (features, score and probe), `parameters` (the
        backbone's), `latency_ms` (the frozen model on one input, up to
        the pooled features the head reads: one matrix product short of
        the whole) and `image_size` (the side it saw; None for text).

    Raises:
        ValueError: an unknown method or candidate, no candidates, or
            candidates of two modalities.

    Example:
        >>> rows = kerastl.rank_backbones(train_ds, val_ds,
        ...                               ["efficientnet-lite0", "efficientnet-lite2"])
        >>> [(row["name"], round(row["score"], 3)) for row in rows]
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}.")
    candidates = checked_candidates(candidates)
    classes = int(max(_labels(train).max(), _labels(validation).max())) + 1
    rows = []
    for name, weights in candidates:
        started = time.perf_counter()
        model, resize = _frozen_model(name, weights, classes, image_size, sequence_length, pooling)
        train_features, train_labels, extract = _features(model, train, resize, views)
        validation_features, validation_labels, extract = _features(
            model, validation, resize, extract=extract
        )
        score = logme(train_features.reshape(-1, train_features.shape[-1]), train_labels)
        accuracy = _probe(
            train_features.mean(axis=0),
            train_labels[: train_features.shape[1]],
            validation_features[0],
            validation_labels,
        )
        row = {
            "name": name,
            "weights": weights,
            "score": score,
            "probe_accuracy": accuracy,
            "seconds": round(time.perf_counter() - started, 1),
            "parameters": int(model.backbone.count_params()),
            "latency_ms": _latency_ms(extract, model, validation, resize),
            "image_size": resize,
        }
        rows.append(row)
        if verbose:
            print(
                f"kerastl: {name} ({weights or 'none'}): LogME {score:.4f}, "
                f"probe accuracy {accuracy:.4f} "
                f"({row['seconds']}s)",
                flush=True,
            )
    return sorted(rows, key=lambda row: -row["score"])


def checked_candidates(candidates: Sequence) -> list[tuple[str, object]]:
    """`rank_backbones`'s candidates as `(name, weights)` pairs, checked before
    any data is read: registered names, at least one, all of one modality.

    Args:
        candidates: registry names or `(name, weights)` pairs.

    Returns:
        `(name, weights)` pairs (`"default"` weights for a bare name).

    Raises:
        ValueError: no candidates, an unknown name, a malformed candidate, or
            candidates of two modalities.

    Example:
        >>> checked_candidates(["efficientnet-lite0", ("efficientnet-lite0", None)])
        [('efficientnet-lite0', 'default'), ('efficientnet-lite0', None)]
    """
    pairs = [_candidate(candidate) for candidate in candidates]
    if not pairs:
        raise ValueError("`candidates` must name at least one backbone. Received: [].")
    _check_one_modality(pairs)
    return pairs


def _candidate(candidate) -> tuple[str, object]:
    if isinstance(candidate, str):
        return candidate, "default"
    if isinstance(candidate, tuple | list) and len(candidate) == 2:
        return candidate[0], candidate[1]
    raise ValueError(
        f"A candidate must be a registry name or a `(name, weights)` pair. Received: {candidate!r}."
    )


def _check_one_modality(candidates) -> None:
    from kerastl.backbones.registry import get_spec

    modalities = {name: get_spec(name).modality for name, _ in candidates}
    if len(set(modalities.values())) > 1:
        raise ValueError(
            "The candidates must all take the same inputs (all image or all text "
            f"backbones). Received: {modalities}."
        )


def _frozen_model(name: str, weights, classes: int, image_size, sequence_length: int, pooling):
    from kerastl.backbones.registry import get_spec
    from kerastl.backbones.tokenizers import create_text_preprocessor
    from kerastl.models import TransferModel

    spec = get_spec(name)
    if spec.modality != "image":
        vocabulary = weights or "default"  # random weights still read the default vocabulary
        preprocessor = create_text_preprocessor(name, vocabulary, sequence_length)
        model = TransferModel(
            name, classes, weights=weights, pooling=pooling, preprocessor=preprocessor
        )
        return model, None
    size = image_size or spec.input_size[0]
    shape = (size, size, 3)
    return TransferModel(name, classes, weights=weights, input_shape=shape, pooling=pooling), size


def _features(model, dataset, size: int | None, views=None, extract=None):
    """`([views, n, d] pooled features (the cut before the head), [views * n]
    labels, the traced extractor)`, read in one pass over `dataset` (a
    shuffled one stays aligned). `extract`: a traced extractor of the same
    model to reuse where the inputs fit its signature (else one is traced)."""
    count = 1 if views is None else views.count
    run = None
    per_view, labels = [[] for _ in range(count)], []
    for inputs, label, *_ in _resized(dataset, size):
        for index in range(count):
            viewed = inputs if views is None else views(inputs, index)
            tokens = model.prepare_data(viewed)  # a text model's strings tokenized
            if run is None:
                run = extract if _fits(extract, tokens) else _traced_extractor(model, tokens)
            features = keras.tree.flatten(run(tokens))[0]
            per_view[index].append(keras.ops.convert_to_numpy(features))
        labels.append(np.asarray(label).reshape(-1))
    labels = np.concatenate(labels)
    return np.stack([np.concatenate(view) for view in per_view]), np.tile(labels, count), run


def _traced_extractor(model, inputs):
    """The model up to the pooled features the head reads, traced for `inputs`' shapes."""
    from kerastl.training.feature_cache import split_model
    from kerastl.training.inference import traced_inference

    return traced_inference(split_model(model, "head").extractor, inputs)


def _fits(run, inputs) -> bool:
    """Whether `inputs` fit the input signature `run` (or None) was traced with."""
    import tensorflow as tf

    if run is None:
        return False
    specs = run.input_signature[0]
    try:
        tf.nest.assert_same_structure(specs, inputs)
    except (ValueError, TypeError):
        return False
    pairs = zip(tf.nest.flatten(specs), tf.nest.flatten(inputs), strict=True)
    return all(spec.is_compatible_with(value) for spec, value in pairs)


def _probe(train_x, train_y, validation_x, validation_y) -> float:
    """A ridge-regression probe on one-hot targets (standardized features), its
    penalty chosen by leave-one-out accuracy on the training features (closed
    form from one SVD), scored on validation. Deterministic: no training loop."""
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    x = (np.asarray(train_x, np.float64) - mean) / scale
    classes = int(max(train_y.max(), validation_y.max())) + 1
    targets = np.eye(classes)[train_y]
    offset = targets.mean(axis=0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    projected = u.T @ (targets - offset)
    best = None
    for penalty in len(x) * np.logspace(-3, 3, 13):
        shrink = s**2 / (s**2 + penalty)
        fitted = u @ (shrink[:, None] * projected) + offset
        leverage = (u**2 * shrink).sum(axis=1)[:, None]
        left_out = (fitted - leverage * targets) / (1 - leverage)  # each example unseen
        accuracy = (left_out.argmax(axis=1) == train_y).mean()
        if best is None or accuracy > best[0]:
            best = (accuracy, penalty)
    weights = vt.T @ ((s / (s**2 + best[1]))[:, None] * projected)
    scores = ((np.asarray(validation_x, np.float64) - mean) / scale) @ weights + offset
    return float((scores.argmax(axis=1) == validation_y).mean())


def _latency_ms(extract, model, dataset, size: int | None) -> float:
    """The median time of `extract` (traced by `_features` on `dataset`) on one input."""
    dataset = model.prepare_data(_resized(dataset, size))
    one = keras.tree.map_structure(lambda t: t[:1], next(iter(dataset))[0])
    extract(one)  # warm: traced for any batch size already
    times = []
    for _ in range(5):
        started = time.perf_counter()
        keras.ops.convert_to_numpy(extract(one))
        times.append(time.perf_counter() - started)
    return round(1000 * float(np.median(times)), 2)


def _resized(dataset, size: int | None):
    if size is None:
        return dataset
    import tensorflow as tf

    def resize(images, *rest):
        return (tf.image.resize(tf.cast(images, tf.float32), (size, size)), *rest)

    return dataset.map(resize)


def _labels(dataset) -> np.ndarray:
    return np.concatenate([np.asarray(batch[1]).reshape(-1) for batch in dataset])
