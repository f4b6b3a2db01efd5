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
    method: str = "logme",
    verbose: int = 1,
) -> list[dict]:
    """Ranks candidate backbones by their frozen features on `train`, best first.

    Args:
        train: batches of `(inputs, integer labels)`: raw pixels `[b, H, W, 3]`
            (resized to each candidate's size) or raw strings for text.
        validation: the same, for the linear probe's accuracy.
        candidates: registry names, or `(name, weights)` pairs (`weights=None`:
            random initialisation, a floor every real candidate should beat).
        image_size: the side images are resized to (default: each
            candidate's own input size).
        method: `"logme"`.
        verbose: `1` a line per candidate, `0` silent.

    Returns:
        One row per candidate, highest `score` first: `name`, `weights`,
        `score`, `probe_accuracy` (a ridge probe on the training features,
        its penalty chosen by leave-one-out, scored on validation),
        `seconds` (features, score and probe), `parameters` (the
        backbone's) and `latency_ms` (the frozen model on one input).

    Raises:
        ValueError: an unknown method or candidate, or no candidates.

    Example:
        >>> rows = kerastl.rank_backbones(train_ds, val_ds,
        ...                               ["efficientnet-lite0", "efficientnet-lite2"])
        >>> [(row["name"], round(row["score"], 3)) for row in rows]
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}.")
    if not candidates:
        raise ValueError("`candidates` must name at least one backbone. Received: [].")
    labels = _labels(train)
    classes = int(max(labels.max(), _labels(validation).max())) + 1
    rows = []
    for candidate in candidates:
        name, weights = (candidate, "default") if isinstance(candidate, str) else candidate
        started = time.perf_counter()
        model, resize = _frozen_model(name, weights, classes, image_size)
        train_features = _features(model, train, resize)
        validation_features = _features(model, validation, resize)
        score = logme(train_features, labels)
        accuracy = _probe(train_features, labels, validation_features, _labels(validation))
        row = {
            "name": name,
            "weights": weights,
            "score": score,
            "probe_accuracy": accuracy,
            "seconds": round(time.perf_counter() - started, 1),
            "parameters": int(model.backbone.count_params()),
            "latency_ms": _latency_ms(model, validation, resize),
        }
        rows.append(row)
        if verbose:
            print(
                f"kerastl: {name} ({weights}): LogME {score:.4f}, probe accuracy {accuracy:.4f} "
                f"({row['seconds']}s)",
                flush=True,
            )
    return sorted(rows, key=lambda row: -row["score"])


def _frozen_model(name: str, weights, classes: int, image_size: int | None):
    from kerastl.backbones.registry import get_spec
    from kerastl.models import TransferModel

    spec = get_spec(name)
    if spec.modality != "image":
        return TransferModel(name, classes, weights=weights), None
    size = image_size or spec.input_size[0]
    model = TransferModel(name, classes, weights=weights, input_shape=(size, size, 3))
    return model, size


def _features(model, dataset, size: int | None) -> np.ndarray:
    """The pooled features of every example (the cut before the head)."""
    from kerastl.training.feature_cache import split_model
    from kerastl.training.inference import traced_inference

    dataset = model.prepare_data(_resized(dataset, size))
    extractor = split_model(model, "head").extractor
    run = traced_inference(extractor, dataset.element_spec[0])
    return np.concatenate(
        [keras.ops.convert_to_numpy(keras.tree.flatten(run(x))[0]) for x, *_ in dataset]
    )


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


def _latency_ms(model, dataset, size: int | None) -> float:
    from kerastl.training.inference import traced_inference

    dataset = model.prepare_data(_resized(dataset, size))
    one = keras.tree.map_structure(lambda t: t[:1], next(iter(dataset))[0])
    run = traced_inference(model, dataset.element_spec[0])
    run(one)  # traced
    times = []
    for _ in range(5):
        started = time.perf_counter()
        keras.ops.convert_to_numpy(run(one))
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
