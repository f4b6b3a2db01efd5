"""Strategy choice, batch and learning-rate scaling, scope checks, precision, NaN stop."""

import json
import types
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastl
from kerastl.distribute.resume import ResumableBackup


def _replicas(count):
    return types.SimpleNamespace(num_replicas_in_sync=count)


def _small_model():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile(
        keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    return model


def test_auto_strategy_without_accelerators_or_cluster_is_one_device(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    strategy = kerastl.get_strategy()
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1


def test_unknown_strategy_name_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match=r"one_device.*Received: name='gpus'"):
        kerastl.get_strategy("gpus")


@pytest.mark.parametrize("name", ["multi_worker", "parameter_server"])
def test_cluster_strategies_without_tf_config_say_what_they_need(monkeypatch, name):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=rf"{name}' needs TF_CONFIG.*Received: TF_CONFIG=None"):
        kerastl.get_strategy(name)


def test_malformed_tf_config_is_reported(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        kerastl.get_strategy("auto")


def test_tf_config_with_two_workers_selects_multi_worker(monkeypatch):
    from kerastl.distribute.strategies import _auto_strategy_name

    config = {
        "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
        "task": {"type": "worker", "index": 0},
    }
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert _auto_strategy_name() == "multi_worker"


def test_tpu_strategy_without_a_tpu_fails_with_a_clear_message(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(RuntimeError, match=r"No TPU found at 'local'.*Received: tpu=None"):
        kerastl.get_strategy("tpu")


def test_global_batch_is_per_replica_batch_times_replicas():
    assert kerastl.global_batch_size(32, _replicas(4)) == 128
    with pytest.raises(ValueError, match="Received: per_replica_batch_size=0"):
        kerastl.global_batch_size(0, _replicas(4))


@pytest.mark.parametrize(("rule", "expected"), [("linear", 4e-3), ("sqrt", 2e-3), ("none", 1e-3)])
def test_learning_rate_scaling_rules(rule, expected):
    assert kerastl.scale_learning_rate(1e-3, _replicas(4), rule) == pytest.approx(expected)


def test_unknown_learning_rate_rule_is_rejected():
    with pytest.raises(ValueError, match="Received: rule='cubic'"):
        kerastl.scale_learning_rate(1e-3, _replicas(4), "cubic")


def test_model_built_outside_the_scope_gets_a_clear_error_not_colocate_vars_with():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    model = kerastl.TransferModel(_backbone(), 2, preprocessing="tf")
    with strategy.scope():
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with pytest.raises(ValueError, match=r"built outside the scope of the MirroredStrategy"):
            model.fit(np.zeros((4, 16, 16, 3)), np.zeros(4), verbose=0)


def test_to_strategy_moves_weights_flags_and_compilation_into_the_scope():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    model = kerastl.TransferModel(_backbone(), 2, preprocessing="tf")
    model.compile(
        keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    kerastl.freeze(model)
    moved = kerastl.to_strategy(model, strategy)
    kerastl.check_model_in_scope(moved, strategy)
    for before, after in zip(model.weights, moved.weights, strict=True):
        np.testing.assert_array_equal(before, after)
    assert kerastl.trainable_groups(moved) == kerastl.trainable_groups(model)
    frozen = [np.array(v) for v in moved.backbone.weights]
    head = np.array(moved.head_layer.kernel)
    with strategy.scope():
        moved.fit(np.random.rand(8, 16, 16, 3) * 255, np.arange(8) % 2, verbose=0)
    for before, variable in zip(frozen, moved.backbone.weights, strict=True):
        np.testing.assert_array_equal(before, variable)
    assert np.abs(np.array(moved.head_layer.kernel) - head).max() > 0


def test_to_strategy_keeps_a_text_models_precision_and_tokenizer():
    """What a config does not carry. A KerasHub backbone's config holds only its
    arguments and its layers take the global policy: a float32 model moved while
    the policy is mixed came back computing partly in float16. A tokenizer's
    vocabulary is an asset: the moved model's, built from config, had none."""
    from checks import TINY_TEXT

    preprocessor = kerastl.create_text_preprocessor("all-minilm-l6-v2", sequence_length=8)
    vocabulary = preprocessor.tokenizer.vocabulary_size()
    backbone = kerastl.create_backbone(
        "bert_base_en_uncased", weights=None, **{**TINY_TEXT, "vocabulary_size": vocabulary}
    )
    model = kerastl.TransferModel(backbone, 2, preprocessor=preprocessor)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # slower on a CPU
            kerastl.set_precision("mixed_float16")
        moved = kerastl.to_strategy(model, tf.distribute.get_strategy())
    finally:
        kerastl.set_precision("float32")
    assert {layer.compute_dtype for layer in moved._flatten_layers()} == {"float32", "int32"}
    tokens = moved.preprocessor(tf.constant(["a moving, funny film", "dull"]))
    np.testing.assert_allclose(moved(tokens), model(tokens), atol=1e-6)


def test_set_precision_validates_and_warns_on_cpu():
    with pytest.raises(ValueError, match="Received: policy='float8'"):
        kerastl.set_precision("float8")
    try:
        with pytest.warns(UserWarning, match="slower than float32 on CPUs"):
            assert kerastl.set_precision("mixed_bfloat16") == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        model = kerastl.TransferModel(_backbone(), 2, preprocessing="tf")
        assert model.backbone.layers[1].compute_dtype == "bfloat16"
        assert model.output.dtype == "float32"
    finally:
        kerastl.set_precision("float32")


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_xla_with_a_group_optimizer_trains_like_the_graph_path(precision):
    inputs = np.random.default_rng(0).uniform(0, 255, (16, 16, 16, 3)).astype("float32")
    labels = np.arange(16) % 2
    heads = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            kerastl.set_precision(precision)
        for jit_compile in (False, True):
            keras.utils.set_random_seed(0)
            model = kerastl.TransferModel(_backbone(), 2, preprocessing="tf")
            optimizer = kerastl.group_optimizer(
                model, {"head": keras.optimizers.SGD(0.1)}, default=keras.optimizers.SGD(0.01)
            )
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            model.compile(optimizer, loss, jit_compile=jit_compile)
            assert model.jit_compile is jit_compile
            before = np.array(model.head_layer.kernel)
            model.fit(inputs, labels, batch_size=8, epochs=2, verbose=0)
            heads.append(np.array(model.head_layer.kernel))
            assert np.isfinite(heads[-1]).all() and np.abs(heads[-1] - before).max() > 1e-4
    finally:
        kerastl.set_precision("float32")
    tolerance = 1e-6 if precision == "float32" else 2e-2
    np.testing.assert_allclose(heads[0], heads[1], atol=tolerance)


def test_nan_loss_stops_training_and_keeps_the_last_good_backup(tmp_path):
    model = _small_model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = rng.integers(0, 2, 48)

    def data(epoch):
        # The loss itself is poisoned, through a NaN sample weight (IEEE multiplication
        # propagates NaN on every CPU). A NaN input would not do: it passes a ReLU,
        # and max(NaN, 0) is 0 on some CPUs and NaN on others.
        weights = np.ones(48, "float32")
        if epoch == 1:
            weights[24:32] = np.nan  # batch 3 of epoch 2
        return tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8)

    history = kerastl.fit_resumable(
        model, data, epochs=3, backup_dir=tmp_path, save_freq=2, verbose=0
    )
    assert history.epoch == [0, 1]
    state = json.loads((tmp_path / "state.json").read_text())
    assert (state["epoch"], state["step"], state["iterations"]) == (1, 2, 8)
    assert not all(np.isfinite(w).all() for w in model.get_weights())

    restored = _small_model()
    assert ResumableBackup(tmp_path).restore(restored) == (1, 2)
    assert all(np.isfinite(w).all() for w in restored.get_weights())
    assert int(restored.optimizer.iterations.numpy()) == 8


def test_fit_resumable_validates_its_arguments(tmp_path):
    model = _small_model()
    data = tf.data.Dataset.from_tensor_slices((np.zeros((8, 4)), np.zeros(8))).batch(4)
    with pytest.raises(ValueError, match="Received: epochs=0"):
        kerastl.fit_resumable(model, data, epochs=0, backup_dir=tmp_path)
    with pytest.raises(ValueError, match="Received: save_freq=0"):
        kerastl.fit_resumable(model, data, epochs=1, backup_dir=tmp_path, save_freq=0)
    uncompiled = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="must be compiled"):
        kerastl.fit_resumable(uncompiled, data, epochs=1, backup_dir=tmp_path)


def test_a_completed_run_removes_its_backup_unless_asked_to_keep_it(tmp_path):
    data = tf.data.Dataset.from_tensor_slices((np.zeros((8, 4)), np.zeros(8))).batch(4)
    kerastl.fit_resumable(_small_model(), data, epochs=2, backup_dir=tmp_path / "a", verbose=0)
    assert not (tmp_path / "a").exists()
    kerastl.fit_resumable(
        _small_model(), data, epochs=2, backup_dir=tmp_path / "b", verbose=0, keep_backup=True
    )
    saved = json.loads((tmp_path / "b" / "state.json").read_text())
    assert (saved["epoch"], saved["step"], saved["iterations"]) == (2, 0, 4)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "state.json",
        "weights-000000004.weights.h5",
    ]


def _backbone():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, strides=2)(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.ReLU()(x), name="tiny")
