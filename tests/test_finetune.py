"""FineTuner stages, feature caching, fine_tune, label smoothing."""

import json
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import (
    assert_last_val_accuracy_is_the_models,
    assert_same_optimizer_state,
    assert_weights_close,
)

import kerastl
from kerastl.training.stage_compile import stage_optimizer
from kerastl.training.stage_plan import plan_stages


def _backbone():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.ReLU()(x), name="tiny")


def _model(dropout=0.3):
    keras.utils.set_random_seed(0)
    return kerastl.TransferModel(_backbone(), 3, preprocessing="tf", dropout=dropout)


def _data(count=48, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (count, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 3, count)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _values(variables):
    return [np.array(v) for v in variables]


def test_cached_head_stage_matches_the_uncached_one_and_leaves_the_backbone(capsys):
    heads = []
    for cache in (True, False):
        model = _model()
        backbone = _values(model.backbone.weights)
        history = kerastl.FineTuner(
            model, cache_features=cache, cache_shuffle_seed=None, verbose=0
        ).fit(_data(), _data(16, seed=1), stages=[kerastl.Stage(3, lr=1e-2)])
        assert history.epoch == [0, 1, 2] and "val_loss" in history.history
        for before, after in zip(backbone, model.backbone.weights, strict=True):
            np.testing.assert_array_equal(before, after)
        heads.append(_values(model.head_layer.weights))
    assert np.abs(heads[0][0] - _values(_model().head_layer.weights)[0]).max() > 1e-3
    for cached, uncached in zip(*heads, strict=True):
        np.testing.assert_allclose(cached, uncached, atol=1e-5)


def test_later_stages_train_the_backbone_and_number_epochs_across_stages():
    model = _model()
    moving = [layer.moving_mean for layer in model.backbone.layers if hasattr(layer, "moving_mean")]
    kernel_before = np.array(model.backbone.layers[1].kernel)
    bn_before = _values(moving)
    tuner = kerastl.FineTuner(model, verbose=0)
    history = tuner.fit(
        _data(),
        stages=[kerastl.Stage(1), kerastl.Stage(2, train="all", lr=1e-2, lr_mult=10)],
    )
    assert history.epoch == [0, 1, 2] and history.stage_starts == [0, 1]
    kernel = model.backbone.layers[1].kernel
    assert np.abs(np.array(kernel) - kernel_before).max() > 1e-5
    for mean_before, mean in zip(bn_before, moving, strict=True):
        np.testing.assert_array_equal(mean_before, mean)  # BatchNorm stays frozen
    assert isinstance(model.optimizer, keras.optimizers.MultiOptimizer)
    assert model.evaluate(_data(), verbose=0)[0] > 0


def test_fine_tune_runs_head_then_everything():
    model = _model(dropout=0.0)
    history = kerastl.fine_tune(model, _data(), epochs=2, freeze_epochs=1)
    assert history.epoch == [0, 1, 2]
    assert kerastl.trainable_groups(model) == {"backbone": "trainable", "head": "trainable"}


def test_stage_arguments_are_validated():
    with pytest.raises(ValueError, match="Received: epochs=0"):
        kerastl.Stage(0)
    with pytest.raises(ValueError, match="Received: optimizer='rmsprop'"):
        kerastl.Stage(1, optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"Received: lr_mult=0\.5"):
        kerastl.Stage(1, lr_mult=0.5)
    with pytest.raises(ValueError, match="needs validation data"):
        kerastl.FineTuner(_model()).fit(_data(), stages=[kerastl.Stage(1, patience=2)])
    with pytest.raises(ValueError, match="Unknown layer group 'block9'"):
        kerastl.FineTuner(_model(), verbose=0).fit(
            _data(), stages=[kerastl.Stage(1, train="block9")]
        )
    with pytest.raises(ValueError, match="Received: mixup=0"):
        kerastl.Stage(1, mixup=0)
    with pytest.raises(ValueError, match="not both"):
        kerastl.Stage(1, mixup=0.2, cutmix=1.0)
    # It would change what trains under a stage's plan (and fail on a cached stage's trainer).
    with pytest.raises(ValueError, match=r"`GradualUnfreezing` cannot run inside a FineTuner"):
        kerastl.FineTuner(_model(), callbacks=(kerastl.GradualUnfreezing(),))


def test_fit_refuses_arrays_and_unbatched_data_saying_how_to_batch():
    """Before: "'tuple' object has no attribute 'cardinality'", and Keras's
    shape error from inside the feature cache's traced inference."""
    tuner = kerastl.FineTuner(_model(), verbose=0)
    x, y = next(iter(_data().unbatch().batch(48)))
    with pytest.raises(TypeError, match=r"`train` must be a batched tf.data.Dataset.*: tuple"):
        tuner.fit((x, y), stages=[kerastl.Stage(1)])
    with pytest.raises(ValueError, match=r"`validation` yields single examples .*\(16, 16, 3\)"):
        tuner.fit(_data(), _data().unbatch(), stages=[kerastl.Stage(1)])
    # One-hot labels (`label_mode="categorical"`): before, Keras's "Argument `output`
    # must have rank (ndim) `target.ndim - 1`" after the features were cached.
    one_hot = _data().map(lambda x, y: (x, tf.one_hot(y, 3)))
    with pytest.raises(
        ValueError, match=r"`train` yields labels of shape \(None, 3\) \(one-hot\?\)"
    ):
        tuner.fit(one_hot, stages=[kerastl.Stage(1)])
    assert tuner.plan is None  # refused before anything was planned or trained


def test_sparse_label_smoothing_matches_the_one_hot_formula():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], "float32")
    labels = np.array([0, 2])
    loss = kerastl.SparseSmoothedCrossentropy(0.1)(labels, logits)
    smoothed = np.eye(3)[labels] * 0.9 + 0.1 / 3
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(loss) == pytest.approx(float(-(smoothed * log_softmax).sum(-1).mean()), rel=1e-5)
    restored = keras.losses.deserialize(
        keras.losses.serialize(kerastl.SparseSmoothedCrossentropy(0.2))
    )
    assert restored.label_smoothing == 0.2


def _lite0(seed=0):
    keras.utils.set_random_seed(seed)
    return kerastl.TransferModel(
        "efficientnet-lite0", 3, weights=None, input_shape=(32, 32, 3), class_names=list("abc")
    )


def _images(count=32, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (count, 32, 32, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 3, count))).batch(batch)


@pytest.mark.slow
def test_caching_below_the_first_trained_group_equals_end_to_end_training():
    weights, summaries = [], []
    for cache in (True, False):
        model = _lite0()
        frozen = _values(kerastl.layer_groups(model)["block5"][0].weights)
        tuner = kerastl.FineTuner(model, cache_features=cache, cache_shuffle_seed=None, verbose=0)
        tuner.fit(_images(), _images(8, seed=1), stages=[kerastl.Stage(2, train="block7", lr=1e-2)])
        after = _values(kerastl.layer_groups(model)["block5"][0].weights)
        for before, now in zip(frozen, after, strict=True):
            np.testing.assert_array_equal(before, now)
        weights.append(_values(model.weights))
        summaries.append(tuner.stage_summaries[0]["cached"])
    assert summaries == ["block7", "no"]
    moved = max(
        np.abs(a - b).max() for a, b in zip(weights[0], _values(_lite0().weights), strict=True)
    )
    assert moved > 1e-3
    for cached, uncached in zip(*weights, strict=True):
        np.testing.assert_allclose(cached, uncached, atol=1e-5)


def _tiny_bert(seed=0):
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=60,
        num_layers=3,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
        dropout=0.0,
    )
    return kerastl.TransferModel(backbone, 2, pooling="mean")


def _tokens(count=24, batch=8, width=12):
    rng = np.random.default_rng(width)
    ids = rng.integers(1, 60, (count, width)).astype("int32")
    mask = np.ones_like(ids)
    mask[::2, 5:] = 0  # half the rows are padded
    inputs = {"token_ids": ids * mask, "padding_mask": mask, "segment_ids": np.zeros_like(ids)}
    return tf.data.Dataset.from_tensor_slices((inputs, rng.integers(0, 2, count))).batch(batch)


@pytest.mark.slow
def test_text_caching_below_a_transformer_layer_equals_end_to_end_training():
    weights = []
    for cache in (True, False):
        model = _tiny_bert()
        tuner = kerastl.FineTuner(model, cache_features=cache, cache_shuffle_seed=None, verbose=0)
        tuner.fit(_tokens(), stages=[kerastl.Stage(2, train="layer_2", lr=1e-2, lr_decay=0.5)])
        assert tuner.stage_summaries[0]["cached"] == ("layer_2" if cache else "no")
        weights.append(_values(model.weights))
    for cached, uncached in zip(*weights, strict=True):
        np.testing.assert_allclose(cached, uncached, atol=1e-5)


def test_feature_cache_spills_to_disk_beyond_its_bound_and_replays_the_same(tmp_path):
    from kerastl.training.feature_cache import FeatureCache, split_model

    split = split_model(_tiny_bert(), "layer_1", "fine")
    data = _tokens(16).concatenate(_tokens(8, width=7))  # batches of different lengths
    in_memory = FeatureCache(split.extractor, data, verbose=0)
    on_disk = FeatureCache(split.extractor, data, memory_limit_mb=0, directory=tmp_path, verbose=0)
    assert in_memory.in_memory and not on_disk.in_memory
    assert len(list(tmp_path.glob("batch-*.npy"))) == 3
    for a, b in zip(in_memory.dataset(), on_disk.dataset(), strict=True):
        for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b), strict=True):
            np.testing.assert_array_equal(x, y)
    shapes = [[tuple(f.shape) for f in features] for features, _ in on_disk.dataset()]
    assert shapes == [[(8, 12, 16), (8, 12)]] * 2 + [[(8, 7, 16), (8, 7)]]


def test_augmentation_without_views_refuses_caching_and_never_enters_the_model():
    flip = keras.layers.RandomFlip("horizontal")
    with pytest.raises(ValueError, match="cached features would hold one random augmentation"):
        kerastl.FineTuner(_model(), cache_features=True, augmentation=flip)
    with pytest.raises(ValueError, match="`cache_views` needs an `augmentation`"):
        kerastl.FineTuner(_model(), cache_views=8)
    model = _model()
    tuner = kerastl.FineTuner(model, augmentation=flip, verbose=0)
    tuner.fit(_data(), stages=[kerastl.Stage(1)])
    assert tuner.stage_summaries[0]["cached"] == "no"
    assert not any(isinstance(layer, keras.layers.RandomFlip) for layer in model._flatten_layers())


def test_cached_dihedral_views_equal_end_to_end_training_on_the_same_views():
    """K-view caching serves, each epoch, the view `FeatureCache.dataset` documents;
    end-to-end training on those very views must give the same model."""
    epochs, batches = 3, list(_data().as_numpy_iterator())
    rng = np.random.default_rng(0)  # view_seed: cache_shuffle_seed=None -> 0
    views = [
        [(kerastl.data.dihedral_view(x, rng.integers(8, size=len(x))), y) for x, y in batches]
        for _ in range(epochs)
    ]
    served = tf.data.Dataset.from_tensor_slices(
        (
            np.concatenate([np.asarray(x) for epoch in views for x, _ in epoch]),
            np.concatenate([y for epoch in views for _, y in epoch]),
        )
    ).batch(8)
    heads = []
    for cached in (True, False):
        model = _model()
        options = {"augmentation": kerastl.data.augmentation("dihedral"), "cache_views": 8}
        tuner = kerastl.FineTuner(
            model, cache_shuffle_seed=None, verbose=0, **(options if cached else {})
        )
        if cached:
            tuner.fit(_data(), stages=[kerastl.Stage(epochs, lr=1e-2)])
            assert tuner.stage_summaries[0]["cached"] == "pooled features"
        else:  # the same steps as one pass over the served views, no caching
            tuner.cache_features = False
            tuner.fit(served, stages=[kerastl.Stage(1, lr=1e-2)])
        heads.append(_values(model.head_layer.weights))
    plain = _model()
    kerastl.FineTuner(plain, cache_shuffle_seed=None, verbose=0).fit(
        _data(), stages=[kerastl.Stage(epochs, lr=1e-2)]
    )
    assert np.abs(heads[0][0] - _values(plain.head_layer.weights)[0]).max() > 1e-3  # views used
    for cached, uncached in zip(*heads, strict=True):
        np.testing.assert_allclose(cached, uncached, atol=1e-5)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_cached_random_views_and_label_mixing_train_under_mixed_precision(precision):
    """Under a mixed policy, augmentation layers compute in float16 or bfloat16.
    Before: the cached stage's extractor, traced for the float32 batches, refused
    a float16 view (`TypeError`); Keras's MixUp multiplied float16 images by a
    float32 draw, and its CutMix asked `tf.range` for float16."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # slower on a CPU
            kerastl.set_precision(precision)
        model = _model()
        head, kernel = _values(model.head_layer.weights)[0], _values(model.backbone.weights)[0]
        views = kerastl.data.views_of(kerastl.data.augmentation("flip"), 2)
        assert views(np.zeros((2, 16, 16, 3), "float32"), 1).dtype == "float32"
        tuner = kerastl.FineTuner(model, augmentation="flip", cache_views=2, verbose=0)
        stages = [
            kerastl.Stage(1, lr=1e-2),
            kerastl.Stage(1, train="all", lr=1e-3, mixup=0.4),
            kerastl.Stage(1, train="all", lr=1e-3, cutmix=1.0),
        ]
        history = tuner.fit(_data(), stages=stages)
    finally:
        kerastl.set_precision("float32")
    assert tuner.stage_summaries[0]["cached"] == "pooled features"
    assert np.isfinite(history.history["loss"]).all() and len(history.epoch) == 3
    assert np.abs(_values(model.head_layer.weights)[0] - head).max() > 1e-3
    assert np.abs(_values(model.backbone.weights)[0] - kernel).max() > 1e-5


@pytest.mark.slow
def test_run_directory_records_every_epoch_and_restores_the_best(tmp_path):
    model = _model()
    tuner = kerastl.FineTuner(
        model,
        metrics=("accuracy", "balanced_accuracy"),
        class_weight="balanced",
        run_dir=tmp_path,
        verbose=0,
    )
    validation = _data(16, seed=1)
    tuner.fit(
        _data(),
        validation,
        stages=[kerastl.Stage(2, lr=0.3), kerastl.Stage(2, train="all", lr=0.3)],
    )
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,stage,") and "val_balanced_accuracy" in rows[0]
    assert [row.split(",")[1] for row in rows[1:]] == ["1:head"] * 2 + ["2:all"] * 2
    losses = [float(row.split(",")[rows[0].split(",").index("val_loss")]) for row in rows[1:]]
    best = tuner.recorder.best_epoch
    assert best == int(np.argmin(losses)) + 1
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    evaluated = model.evaluate(validation, verbose=0, return_dict=True)["loss"]
    assert evaluated == pytest.approx(min(losses), rel=1e-5)
    with open(tuner.write_report(validation)) as report:
        text = report.read()
    assert f"best epoch: {best}" in text and "| 1:head | 2 |" in text
    for name in ("learning_curves.png", "confusion_matrix.png", "best.weights.h5", "model.keras"):
        assert (tmp_path / name).stat().st_size > 0
    restored = _model()
    restored.load_weights(tmp_path / "best.weights.h5")
    for a, b in zip(restored.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a, b)

    # A FineTuner's run directory exports as `kerastl train`'s does (no config.yaml).
    from kerastl.app.export_run import export_run

    samples = np.load(tmp_path / "samples.npz")["images"]
    np.testing.assert_array_equal(samples, next(iter(validation))[0][: len(samples)])
    onnx_path = export_run(tmp_path, "onnx")
    assert json.loads((tmp_path / "export" / "model.onnx.parity.json").read_text())["passed"]
    version = export_run(tmp_path, "bundle")
    assert os.path.basename(os.path.dirname(version)) == tmp_path.name
    assert os.path.getsize(onnx_path) > 0


def test_balanced_accuracy_matches_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    labels, logits = rng.integers(0, 3, 50), rng.normal(size=(50, 3))
    metric = kerastl.BalancedAccuracy(3)
    metric.update_state(labels[:20], logits[:20])
    metric.update_state(labels[20:], logits[20:])
    expected = balanced_accuracy_score(labels, logits.argmax(-1))
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)


def test_a_misspelled_monitor_is_refused_before_any_training():
    model = _model()
    before = _values(model.weights)
    tuner = kerastl.FineTuner(
        model, metrics=("accuracy", "balanced_accuracy"), monitor="val_balanced_acc", verbose=0
    )
    with pytest.raises(ValueError, match=r"Did you mean 'val_balanced_accuracy'.*val_balanced_acc"):
        tuner.fit(_data(), _data(16, seed=1), stages=[kerastl.Stage(1)])
    for a, b in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"no validation data"):
        kerastl.FineTuner(model, monitor="val_loss", verbose=0).fit(
            _data(), stages=[kerastl.Stage(1)]
        )


def test_cached_training_batches_come_in_a_new_seeded_order_each_epoch():
    from kerastl.training.feature_cache import FeatureCache, split_model

    cache = FeatureCache(split_model(_model(), "head").extractor, _data(), verbose=0)

    def epochs(seed):
        dataset = cache.dataset(seed)
        return [[int(labels[0] * 100 + labels[1]) for _, labels in dataset] for _ in range(2)]

    stored = epochs(None)
    assert stored[0] == stored[1]  # no seed: the stored order, every epoch
    first, second = epochs(3)
    assert sorted(first) == sorted(stored[0]) and first != second
    assert epochs(3) == [first, second]


def test_a_cut_without_the_padding_mask_falls_back_or_raises_when_caching_is_required():
    from kerastl.training.feature_cache import CacheRefused

    tuner = kerastl.FineTuner(_tiny_bert(), verbose=0)
    tuner.fit(_tokens(), stages=[kerastl.Stage(1, train="pooler")])
    assert tuner.stage_summaries[0]["cached"] == "no"
    with pytest.raises(CacheRefused, match="do not carry the padding mask"):
        kerastl.FineTuner(_tiny_bert(), cache_features=True, verbose=0).fit(
            _tokens(), stages=[kerastl.Stage(1, train="pooler")]
        )


def test_a_stage_sets_the_head_dropout_for_its_epochs_only():
    model = _model(dropout=0.3)
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seen.append(model.dropout_layer.rate)
    )
    tuner = kerastl.FineTuner(model, callbacks=(record,), verbose=0)
    tuner.fit(_data(), stages=[kerastl.Stage(1, dropout=0.6), kerastl.Stage(1, train="all")])
    assert seen == [0.6, 0.3] and model.get_config()["dropout"] == 0.3
    with pytest.raises(ValueError, match=r"Received: dropout=1\.5"):
        kerastl.Stage(1, dropout=1.5)


@pytest.mark.slow
@pytest.mark.parametrize("cached", ["head", "block6"])
def test_the_saved_model_reloads_with_the_optimizer_that_trained_it(tmp_path, cached):
    """After a cached stage the model's own optimizer is the one that trained (a
    group optimizer for `block6`); `model.keras` reloads with its slots."""
    model = _lite0()
    tuner = kerastl.FineTuner(model, run_dir=tmp_path, verbose=0)
    stages = [kerastl.Stage(1, lr=1e-2), kerastl.Stage(1, train=cached, lr=1e-3, lr_mult=3)]
    tuner.fit(_images(16), _images(8, seed=1), stages=stages)
    assert tuner.stage_summaries[-1]["cached"] != "no"
    assert int(model.optimizer.iterations) == 2  # the last stage's steps
    tuner.write_report(_images(8, seed=1), insight=False)  # the figures: test_insight
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = keras.models.load_model(tmp_path / "model.keras")
    slots = [np.array(v) for v in model.optimizer.variables if "momentum" in v.path]
    assert slots and any(np.abs(slot).max() > 0 for slot in slots)
    assert_same_optimizer_state(model.optimizer, loaded.optimizer)


@pytest.mark.slow
def test_each_stage_reads_the_groups_resolved_once_for_the_model():
    keras.utils.set_random_seed(0)
    model = kerastl.TransferModel(
        "mobilenetv3small", num_classes=3, weights=None, input_shape=(32, 32, 3)
    )
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32"), rng.integers(0, 3, 16))
    ).batch(8)
    coarse = model.groups.names()
    fine = model.groups.names("fine")
    before = kerastl.LayerGroups.resolutions
    stages = [
        kerastl.Stage(1),  # cached head: splits the model at the pooled features
        kerastl.Stage(1, train=fine[-3], lr_decay=0.5),  # cached fine groups, layer-wise decay
    ]
    kerastl.FineTuner(model, verbose=0).fit(data, data, stages=stages)
    kerastl.discriminative_optimizer(model, 1e-3, lr_mult=10)  # spread over the coarse groups
    kerastl.describe(model)
    assert coarse[-1] == "head" and model.groups.granularity_of(fine[-3]) == "fine"
    assert kerastl.LayerGroups.resolutions == before  # resolved once, when first read above
    assert model.groups is kerastl.LayerGroups.of(model)
    fresh = kerastl.TransferModel("mobilenetv3small", 3, weights=None, input_shape=(32, 32, 3))
    kerastl.layer_groups(fresh)
    kerastl.freeze(fresh)
    assert kerastl.LayerGroups.resolutions == before + 1


@pytest.mark.parametrize("cached", [False, True])
def test_ema_validation_and_the_saved_model_hold_the_hand_computed_average(tmp_path, cached):
    """Stage(ema=m): average_1 = w_1, then average_t = m * average_{t-1} + (1 - m) * w_t."""
    seen = []

    class Raw(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append([np.array(w) for w in tuned.head_layer.weights])

    tuned = _model(dropout=0.0)
    validation = _data(16, seed=1)
    tuner = kerastl.FineTuner(
        tuned, cache_features=cached, callbacks=[Raw()], run_dir=tmp_path, verbose=0
    )
    tuner.fit(_data(), validation, stages=[kerastl.Stage(1, lr=0.05, optimizer="sgd", ema=0.8)])
    assert tuner.stage_summaries[0]["cached"] == ("pooled features" if cached else "no")
    average = seen[0]
    for weights in seen[1:]:
        average = [0.8 * a + 0.2 * w for a, w in zip(average, weights, strict=True)]
    assert np.abs(average[0] - seen[-1][0]).max() > 1e-3  # the average is not the last step
    for held, expected in zip(tuned.head_layer.weights, average, strict=True):
        np.testing.assert_allclose(np.array(held), expected, atol=1e-6)
    tuned.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logged = tuner.recorder.rows[0]["val_loss"]
    assert tuned.evaluate(validation, verbose=0, return_dict=True)["loss"] == pytest.approx(
        logged, rel=1e-5
    )
    tuner.write_report(validation)
    saved = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(np.array(saved.head_layer.kernel), average[0], atol=1e-6)
    with pytest.raises(ValueError, match=r"`ema` must be in \(0, 1\). Received: ema=1.5"):
        kerastl.Stage(1, ema=1.5)


@pytest.mark.slow
def test_a_cache_is_recomputed_when_an_earlier_stage_trained_its_frozen_layers():
    """head -> all -> head: the last stage must not replay the pooled features of
    the first (the backbone, BatchNorm statistics included, changed in between)."""
    heads, summaries = [], []
    stages = [kerastl.Stage(1, lr=1e-2), kerastl.Stage(1, train="all", lr=1e-2)]
    stages.append(kerastl.Stage(2, lr=1e-2))
    for cache in (True, False):
        model = _model()
        tuner = kerastl.FineTuner(
            model, cache_features=cache, cache_shuffle_seed=None, restore_best=False, verbose=0
        )
        tuner.fit(_data(), _data(16, seed=1), stages=stages)
        heads.append(_values(model.head_layer.weights))
        summaries.append([summary["cached"] for summary in tuner.stage_summaries])
    assert summaries == [["pooled features", "no", "pooled features"], ["no"] * 3]
    for cached, uncached in zip(*heads, strict=True):
        np.testing.assert_allclose(cached, uncached, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("memory_limit_mb", [1024, 0])
def test_pooled_features_computed_from_a_lower_cache_equal_those_from_the_images(
    memory_limit_mb, tmp_path
):
    model = _lite0()
    head = kerastl.training.feature_cache.split_model(model, "head")
    block6 = kerastl.training.feature_cache.split_model(model, "block6")
    views = kerastl.data.views_of(kerastl.data.augmentation("dihedral"), 8)
    train, validation = _images(), _images(8, seed=1)
    served = []
    for source in (block6, None):
        store = kerastl.training.feature_cache.FeatureStore(
            views=views,
            memory_limit_mb=memory_limit_mb,
            directory=tmp_path / str(source is None),
            verbose=0,
        )
        datasets = store.datasets(head, train, validation, source=source)
        served.append([list(data.as_numpy_iterator()) for data in datasets])
        assert sorted(store._caches) == (
            ["block6", "pooled features"] if source else ["pooled features"]
        )
        entry = store._caches["pooled features"]
        assert entry.train.in_memory == entry.validation.in_memory == (memory_limit_mb > 0)
    for derived, direct, batches in zip(*served, (4, 1), strict=True):  # train, validation
        assert len(derived) == len(direct) == batches
        for (features, labels), (expected, expected_labels) in zip(derived, direct, strict=True):
            np.testing.assert_array_equal(labels, expected_labels)
            np.testing.assert_allclose(features[0], expected[0], atol=1e-5)


@pytest.mark.slow
def test_a_probe_before_a_top_block_stage_runs_the_lower_layers_once(capsys):
    weights = []
    stages = [kerastl.Stage(2, lr=1e-2), kerastl.Stage(2, train="block7", lr=1e-2)]
    for cache in (True, False):
        model = _lite0()
        tuner = kerastl.FineTuner(model, cache_features=cache, cache_shuffle_seed=None, verbose=1)
        tuner.fit(_images(), _images(8, seed=1), stages=stages)
        weights.append(_values(model.weights))
    printed = [line for line in capsys.readouterr().out.splitlines() if "caching" in line]
    assert printed == [
        "kerastl: caching block7 (once) ...",
        "kerastl: caching pooled features from block7's cache ...",
    ]
    for cached, uncached in zip(*weights, strict=True):
        np.testing.assert_allclose(cached, uncached, atol=1e-5)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_a_mixing_stage_trains_end_to_end_on_the_soft_labels_of_the_mixed_batches(kind):
    """Equal to Keras `fit` with a categorical cross-entropy on the same mixed
    batches; validation stays unmixed, scored on one-hot labels."""
    stage = kerastl.Stage(2, lr=1e-2, **{kind: 0.4})
    model = _model()
    tuner = kerastl.FineTuner(model, restore_best=False, verbose=0, metrics=["accuracy"])
    history = tuner.fit(_data(), _data(16, seed=1), stages=[stage])
    assert tuner.stage_summaries[0]["cached"] == "no"
    by_hand = _model()
    plan_stages(by_hand, [stage])[0].prepare(by_hand)
    by_hand.compile(
        stage_optimizer(stage, by_hand, steps=2 * 6),
        keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    mixed = _data().map(kerastl.data.label_mixing(kind, 0.4, num_classes=3, seed=0))
    by_hand.fit(mixed, epochs=2, verbose=0)
    assert_weights_close(model, by_hand)
    plain = _model()
    kerastl.FineTuner(plain, cache_features=False, verbose=0).fit(
        _data(), stages=[kerastl.Stage(2, lr=1e-2)]
    )
    assert (
        np.abs(_values(plain.head_layer.weights)[0] - _values(model.head_layer.weights)[0]).max()
        > 1e-3
    )
    assert_last_val_accuracy_is_the_models(history, model, _data(16, seed=1))


def test_mixing_is_refused_for_a_text_model():
    with pytest.raises(ValueError, match=r"MixUp and CutMix mix images.*mixup=0\.2"):
        kerastl.FineTuner(_tiny_bert(), verbose=0).fit(
            _tokens(), stages=[kerastl.Stage(1, mixup=0.2)]
        )


@pytest.mark.slow
def test_a_probe_before_a_mixing_stage_caches_only_its_own_features(capsys):
    stages = [kerastl.Stage(1, lr=1e-2), kerastl.Stage(1, train="block7", lr=1e-2, mixup=0.2)]
    tuner = kerastl.FineTuner(_lite0(), cache_shuffle_seed=None, verbose=1)
    tuner.fit(_images(), _images(8, seed=1), stages=stages)
    printed = [line for line in capsys.readouterr().out.splitlines() if "caching" in line]
    assert printed == [
        "kerastl: caching pooled features (once) ...",
        "kerastl: not caching: mixup mixes the images of each batch.",
    ]
    assert [summary["cached"] for summary in tuner.stage_summaries] == ["pooled features", "no"]


def test_a_stage_naming_an_unregistered_backbones_one_group_trains_it_end_to_end(capsys):
    """Such a backbone is one group (`backbone`): nothing below it is frozen, so
    no cache; caching the pooled features instead trained the head alone."""
    model = _model()
    kernel = model.backbone.layers[1].kernel
    before = np.array(kernel)
    tuner = kerastl.FineTuner(model, verbose=1)
    tuner.fit(_data(), stages=[kerastl.Stage(1, train="backbone", lr=1e-2)], backup_dir=False)
    assert tuner.stage_summaries[0]["cached"] == "no"
    assert "not caching: 'backbone' holds the whole backbone" in capsys.readouterr().out
    assert np.abs(np.array(kernel) - before).max() > 1e-4
