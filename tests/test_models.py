"""TransferModel: preprocessing inside, heads, serialization round trips."""

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from checks import TINY_TEXT

import kerastl
from kerastl.models import TokenPooling


def _images(side=32, n=2):
    return np.random.default_rng(0).uniform(0, 255, (n, side, side, 3)).astype("float32")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "multilabel", "regression"])
def test_save_load_round_trip_in_safe_mode_gives_identical_outputs(tmp_path, task):
    model = kerastl.TransferModel(  # a Keras Applications backbone (Lite0's test is below)
        "mobilenet",
        num_classes=4,
        task=task,
        weights=None,
        input_shape=(32, 32, 3),
        dropout=0.2,
        class_names=["a", "b", "c", "d"],
    )
    kerastl.freeze_to(model, "stage5")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded, kerastl.TransferModel)
    x = _images()
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert loaded.class_names == ["a", "b", "c", "d"] and loaded.task == task
    assert list(kerastl.layer_groups(loaded)) == list(kerastl.layer_groups(model))
    assert kerastl.trainable_groups(loaded) == kerastl.trainable_groups(model)


@pytest.mark.slow
def test_lite0_transfer_model_round_trip_keeps_the_tf_padding_and_frozen_layers(tmp_path):
    model = kerastl.TransferModel("efficientnet-lite0", num_classes=2, input_shape=(64, 64, 3))
    kerastl.freeze_to(model, "block7")  # a KerasHub backbone: its config has no layer flags
    path = tmp_path / "lite0.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    pads = {
        layer.name: layer.padding
        for layer in loaded.backbone.layers
        if isinstance(layer, keras.layers.ZeroPadding2D)
    }
    assert pads["stem_conv_pad"] == ((0, 1), (0, 1))
    assert kerastl.trainable_groups(loaded) == kerastl.trainable_groups(model)
    assert {v.path for v in loaded.trainable_weights} == {v.path for v in model.trainable_weights}
    x = _images(64)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


@pytest.mark.slow
def test_saved_lite0_model_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    model = kerastl.TransferModel("efficientnet-lite0", num_classes=2, input_shape=(64, 64, 3))
    path = tmp_path / "lite0.keras"
    model.save(path)
    x = _images(64)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", model.predict(x, verbose=0))
    script = (
        "import sys, numpy as np, keras, kerastl\n"
        "m = keras.models.load_model(sys.argv[1], safe_mode=True)\n"
        "assert type(m.backbone).__name__ == 'TFSamePaddingEfficientNetBackbone'\n"
        "assert m.input_shape == (None, 64, 64, 3), m.input_shape  # exports need the size\n"
        "out = m.predict(np.load(sys.argv[2]), verbose=0)\n"
        "np.testing.assert_array_equal(out, np.load(sys.argv[3]))\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(path),
            str(tmp_path / "x.npy"),
            str(tmp_path / "expected.npy"),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )


def test_preprocessing_runs_inside_the_model_on_raw_pixels():
    model = kerastl.TransferModel("vgg16", num_classes=2, weights=None, input_shape=(32, 32, 3))
    x = _images()
    expected = keras.applications.vgg16.preprocess_input(x.copy())
    features = model.backbone(expected)
    pooled = keras.ops.mean(features, axis=(1, 2))
    direct = model.head_layer(pooled)
    np.testing.assert_allclose(model(x), direct, rtol=1e-5, atol=1e-5)


def test_text_transfer_model_pools_and_round_trips(tmp_path):
    backbone = kerastl.create_backbone(
        "bert_base_en_uncased", weights=None, **TINY_TEXT, max_sequence_length=16
    )
    model = kerastl.TransferModel(backbone, num_classes=2, pooling="mean")
    assert set(model.input) == {"token_ids", "padding_mask", "segment_ids"}
    inputs = {
        "token_ids": np.array([[2, 5, 9, 3, 0, 0]], "int32"),
        "padding_mask": np.array([[1, 1, 1, 1, 0, 0]], "int32"),
        "segment_ids": np.zeros((1, 6), "int32"),
    }
    path = tmp_path / "text.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(
        model.predict(inputs, verbose=0), loaded.predict(inputs, verbose=0)
    )
    assert list(kerastl.layer_groups(loaded)) == ["embeddings", "encoder", "pooler", "head"]


def test_masked_mean_pooling_ignores_padding():
    sequence = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], "float32")
    mask = np.array([[1, 1, 0]])
    pooled = TokenPooling("mean")({"sequence": sequence, "mask": mask})
    np.testing.assert_allclose(pooled, [[2.0, 3.0]])
    np.testing.assert_allclose(
        TokenPooling("cls")({"sequence": sequence, "mask": mask}), [[1.0, 2.0]]
    )


def test_unregistered_backbone_is_one_group():
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Conv2D(4, 3, name="c")(inputs)
    custom = keras.Model(inputs, outputs, name="my_net")
    model = kerastl.TransferModel(custom, num_classes=2)
    assert list(kerastl.layer_groups(model)) == ["backbone", "head"]
    assert kerastl.freeze(model) == ["head"]
    assert {v.path for v in model.trainable_weights} == {"head_dense/kernel", "head_dense/bias"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 0}, "num_classes=0"),
        ({"num_classes": 2, "task": "ranking"}, "task='ranking'"),
        ({"num_classes": 2, "dropout": 1.5}, "dropout=1.5"),
        ({"num_classes": 2, "pooling": "cls"}, "pooling='cls'"),
        ({"num_classes": 2, "class_names": ["only-one"]}, "Received: 1 names"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kerastl.TransferModel("mobilenet", weights=None, input_shape=(32, 32, 3), **kwargs)


def _tiny_image_model(task="classification"):
    inputs = keras.Input((8, 8, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs), name="tiny")
    return kerastl.TransferModel(backbone, 3, task=task, preprocessing="tf")


def _cross_entropy_of_logits(model, x, y):
    logits = keras.ops.convert_to_numpy(model(x))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probabilities[np.arange(len(y)), y].mean())


@pytest.mark.parametrize(
    "loss",
    [
        keras.losses.SparseCategoricalCrossentropy(),
        "sparse_categorical_crossentropy",
        keras.losses.sparse_categorical_crossentropy,
    ],
)
def test_a_probability_loss_on_the_logits_is_corrected_with_a_warning(loss):
    model = _tiny_image_model()
    x = np.random.default_rng(0).uniform(0, 255, (6, 8, 8, 3)).astype("float32")
    y = np.arange(6) % 3
    with pytest.warns(UserWarning, match=r"outputs logits.*from_logits=True"):
        model.compile("adam", loss)
    evaluated = model.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert evaluated == pytest.approx(_cross_entropy_of_logits(model, x, y), rel=1e-5)


@pytest.mark.parametrize(
    "task, loss, metric",
    [
        ("classification", "SparseCategoricalCrossentropy", "accuracy"),
        ("multilabel", "BinaryCrossentropy", "accuracy"),
        ("regression", "MeanSquaredError", "mae"),
    ],
)
def test_compile_defaults_the_loss_and_metrics_for_the_task(task, loss, metric):
    model = _tiny_image_model(task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.compile(keras.optimizers.SGD(0.1))
    assert type(model.loss).__name__ == loss
    assert getattr(model.loss, "from_logits", True) is True
    x = np.random.default_rng(0).uniform(0, 255, (6, 8, 8, 3)).astype("float32")
    y = {
        "classification": np.arange(6) % 3,
        "multilabel": (np.arange(18).reshape(6, 3) % 2).astype("float32"),
        "regression": np.ones((6, 3), "float32"),
    }[task]
    before = np.array(model.head_layer.kernel)
    logs = model.fit(x, y, epochs=1, verbose=0).history
    assert metric in logs
    assert np.abs(np.array(model.head_layer.kernel) - before).max() > 1e-4


def _tiny_bert_with_minilm_tokenizer():
    keras.utils.set_random_seed(0)
    preprocessor = kerastl.create_text_preprocessor("all-minilm-l6-v2", sequence_length=16)
    config = {**TINY_TEXT, "vocabulary_size": preprocessor.tokenizer.vocabulary_size()}
    backbone = kerastl.create_backbone(
        "bert_base_en_uncased", weights=None, max_sequence_length=16, **config
    )
    return kerastl.TransferModel(
        backbone, num_classes=2, class_names=["rotten", "fresh"], preprocessor=preprocessor
    )


TEXTS = ["a moving, funny film", "dull and far too long", "great cast", "a mess"] * 4
LABELS = np.array([1, 0, 1, 0] * 4)


@pytest.mark.slow
def test_a_text_model_takes_raw_strings_in_fine_tuner_fit_predict_and_after_reloading(tmp_path):
    import tensorflow as tf

    model = _tiny_bert_with_minilm_tokenizer()
    data = tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(4)
    stages = [kerastl.Stage(1, lr=1e-2), kerastl.Stage(1, train="layer_1", lr=1e-3)]
    tuner = kerastl.FineTuner(model, verbose=0)
    with pytest.raises(ValueError, match=r"`train` yields single examples \(inputs of shape \(\)"):
        tuner.fit(data.unbatch(), data, stages=stages)  # one string at a time
    history = tuner.fit(data, data, stages=stages)
    assert tuner.stage_summaries[0]["cached"] != "no" and len(history.epoch) == 2
    tokens = model.preprocessor(tf.constant(TEXTS[:2]))
    np.testing.assert_allclose(
        model.predict(TEXTS[:2], verbose=0), model.predict(tokens, verbose=0), atol=1e-6
    )
    model.compile(keras.optimizers.Adam(1e-3))
    assert "accuracy" in model.evaluate(data, verbose=0, return_dict=True)

    model.save(tmp_path / "text.keras")
    loaded = keras.models.load_model(tmp_path / "text.keras")
    np.testing.assert_allclose(
        loaded.predict(TEXTS[:2], verbose=0), model.predict(TEXTS[:2], verbose=0), atol=1e-6
    )


def test_inputs_that_do_not_fit_are_refused_naming_what_to_pass():
    import tensorflow as tf

    backbone = kerastl.create_backbone("bert_base_en_uncased", weights=None, **TINY_TEXT)
    untokenized = kerastl.TransferModel(backbone, num_classes=2)
    strings = tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(4)
    with pytest.raises(ValueError, match=r"no tokenizer.*create_text_preprocessor.*padding_mask"):
        kerastl.FineTuner(untokenized, verbose=0).fit(strings, stages=[kerastl.Stage(1)])
    wrong = tf.data.Dataset.from_tensor_slices(({"ids": [[1, 2]]}, [0])).batch(1)
    with pytest.raises(ValueError, match=r"raw strings or a dict of its token inputs"):
        untokenized.fit(wrong)
    image = _tiny_image_model()
    with pytest.raises(ValueError, match=r"takes pixels"):
        image.predict(["a sentence"])


@pytest.mark.slow
def test_a_text_model_takes_a_string_tensor_as_iterating_a_dataset_gives_it():
    import tensorflow as tf

    model = _tiny_bert_with_minilm_tokenizer()
    model.compile(keras.optimizers.Adam(1e-2))
    data = tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(8)
    texts, labels = next(iter(data))  # an EagerTensor of strings, as a loop over `data` gives
    expected = model.predict(list(TEXTS[:8]), verbose=0)
    np.testing.assert_allclose(model.predict(texts, verbose=0), expected, atol=1e-6)
    assert "loss" in model.evaluate(texts, labels, verbose=0, return_dict=True)
    before = np.array(model.head_layer.kernel)
    model.fit(texts, labels, epochs=1, verbose=0)
    assert np.abs(np.array(model.head_layer.kernel) - before).max() > 1e-4
    with pytest.raises(ValueError, match=r"shape \[batch\].*tensor of strings with shape \(1, 8\)"):
        model.predict(tf.reshape(texts, (1, 8)), verbose=0)
    with pytest.raises(ValueError, match=r"shape \[batch\].*ragged tensor"):
        model.predict(tf.ragged.constant([["a"], ["b", "c"]]), verbose=0)
    with pytest.raises(ValueError, match=r"shape \[batch\].*shape \(2, 1\)"):
        model.predict(np.array([["a"], ["b"]]), verbose=0)
    with pytest.raises(ValueError, match=r"takes the token inputs.*KerasHub.*model.predict"):
        model(texts)
    with pytest.raises(ValueError, match=r"predict_probabilities.*Received: a list of 8 strings"):
        model(list(TEXTS[:8]))  # before: Keras's "expects 3 named input(s)... received 8"
    # Probabilities from raw strings in each form (before: the same Keras error).
    logits = model.predict(list(TEXTS[:8]), verbose=0)  # after the fit above
    softmax = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    for strings in (list(TEXTS[:8]), np.array(TEXTS[:8]), texts):
        probabilities = kerastl.predict_probabilities(model, strings)
        np.testing.assert_allclose(probabilities, softmax, atol=1e-6)
    with pytest.raises(ValueError, match=r"image transforms. Received: tta='flip' for a text"):
        kerastl.predict_probabilities(model, texts, tta="flip")


@pytest.mark.slow
def test_a_pooler_the_pooling_skips_never_trains_and_one_it_uses_does():
    import warnings

    import tensorflow as tf

    model = _tiny_bert_with_minilm_tokenizer()  # `cls` pooling: the pooler is unused
    assert [layer.name for layer in model.unused_layers()] == ["pooled_dense"]
    kerastl.unfreeze(model)
    assert not [v.path for v in model.trainable_weights if "pooled_dense" in v.path]
    assert kerastl.trainable_groups(model)["pooler"] == "frozen"
    data = tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(8)
    with warnings.catch_warnings(record=True) as caught:  # Keras warned at every step
        warnings.simplefilter("always")
        kerastl.FineTuner(model, verbose=0).fit(data, stages=[kerastl.Stage(1, train="all")])
    assert not [w for w in caught if "Gradients do not exist" in str(w.message)]

    pooled = kerastl.TransferModel(
        model.backbone, 2, pooling="pooled", preprocessor=model.preprocessor
    )
    assert pooled.unused_layers() == []
    kerastl.unfreeze(pooled)
    assert [v.path for v in pooled.trainable_weights if "pooled_dense" in v.path]


@pytest.mark.slow
def test_a_text_run_reports_and_evaluates_on_raw_string_validation(tmp_path):
    import tensorflow as tf

    model = _tiny_bert_with_minilm_tokenizer()
    data = tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(4)
    tuner = kerastl.FineTuner(model, run_dir=tmp_path, verbose=0)
    tuner.fit(data, data, stages=[kerastl.Stage(1, lr=1e-2)])
    report = Path(tuner.write_report(data)).read_text()  # its confusion matrix tokenizes first
    scores = kerastl.evaluate(model, data, verbose=0)
    assert scores.plain.examples == len(TEXTS)
    assert f"validation accuracy (model as saved): {scores.plain.accuracy:.4f}" in report
    assert list(np.load(tmp_path / "samples.npz")["text"]) == TEXTS[:8]
