"""`kerastl.evaluate`: plain and test-time-augmented scores from one pass."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastl


def _model():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    backbone = keras.Model(inputs, keras.layers.Conv2D(8, 3)(x), name="tiny")
    keras.utils.set_random_seed(3)
    model = kerastl.TransferModel(backbone, 3, preprocessing="tf", class_names=["a", "b", "c"])
    kernel = np.random.default_rng(1).normal(0, 30, model.head_layer.kernel.shape)
    model.head_layer.kernel.assign(kernel)  # predictions that depend on orientation
    return model


def _data(count=20):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (count, 16, 16, 3)).astype("float32")
    return x, rng.integers(0, 3, count)


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_tta_scores_are_those_of_the_mean_probability_over_the_views():
    model = _model()
    x, y = _data()
    symmetries = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    symmetries += [np.flip(view, axis=2) for view in symmetries]
    per_view = np.stack(  # batches of 6, as evaluated below: the very same computations
        [
            np.concatenate(
                [
                    _softmax(np.asarray(model(np.ascontiguousarray(v[i : i + 6]), training=False)))
                    for i in range(0, len(v), 6)
                ]
            )
            for v in symmetries
        ]
    )
    result = kerastl.evaluate(
        model, tf.data.Dataset.from_tensor_slices((x, y)).batch(6), tta="dihedral"
    )
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (y, per_view.mean(0).argmax(-1)), 1)
    np.testing.assert_array_equal(result.tta.matrix, expected)
    plain = np.zeros((3, 3), int)
    np.add.at(plain, (y, per_view[0].argmax(-1)), 1)
    np.testing.assert_array_equal(result.plain.matrix, plain)
    assert not np.array_equal(per_view.mean(0).argmax(-1), per_view[0].argmax(-1))  # TTA matters
    np.testing.assert_allclose(
        kerastl.predict_probabilities(model, x[:6], tta="dihedral"),
        per_view[:, :6].mean(0),
        atol=1e-6,
    )
    np.testing.assert_allclose(  # `flip`: the identity and the horizontal mirror
        kerastl.predict_probabilities(model, x[:6], tta="flip"),
        per_view[[0, 4], :6].mean(0),
        atol=1e-6,
    )
    recall = [plain[i, i] / plain[i].sum() for i in range(3)]
    assert result.plain.recall == pytest.approx(dict(zip("abc", recall, strict=True)))
    assert result.plain.balanced_accuracy == pytest.approx(np.mean(recall))
    assert result.plain.accuracy == pytest.approx(np.trace(plain) / 20)
    report = result.markdown()
    assert "| TTA (dihedral, mean of probabilities) |" in report and "recall c" in report


def test_tta_names_are_checked_and_text_models_refuse_image_views():
    model = _model()
    with pytest.raises(ValueError, match=r"`tta` must be one of \('dihedral', 'flip', 'none'\)"):
        kerastl.evaluate(model, [], tta="rotate")
    model.modality = "text"
    with pytest.raises(
        ValueError, match=r"image transforms\. Received: tta='flip' for a text model"
    ):
        kerastl.evaluate(model, [], tta="flip")


def test_other_tasks_get_sigmoid_probabilities_or_a_refusal_naming_what_to_use():
    """Before: a multi-label model's probabilities were a softmax across its
    independent labels, a regression model's a softmax of one value (always 1);
    `evaluate` failed with an IndexError and a FineTuner stage inside the loss."""
    backbone = _model().backbone
    multilabel = kerastl.TransferModel(backbone, 3, task="multilabel", preprocessing="tf")
    x, _ = _data(4)
    logits = np.asarray(multilabel(x, training=False))
    flipped = np.asarray(multilabel(np.flip(x, axis=2), training=False))
    np.testing.assert_allclose(
        kerastl.predict_probabilities(multilabel, x, tta="flip"),
        (1 / (1 + np.exp(-logits)) + 1 / (1 + np.exp(-flipped))) / 2,
        atol=1e-6,
    )
    regression = kerastl.TransferModel(backbone, 1, task="regression", preprocessing="tf")
    with pytest.raises(ValueError, match=r"predicts values, not probabilities: use `model.pre"):
        kerastl.predict_probabilities(regression, x)
    for model in (multilabel, regression):
        with pytest.raises(ValueError, match=rf"score a {model.task} model with `model.evaluate`"):
            kerastl.evaluate(model, [])
        with pytest.raises(ValueError, match=rf"single-label classifiers .* task='{model.task}'"):
            kerastl.FineTuner(model)


def test_the_tuner_takes_a_policy_name_and_warns_when_the_test_split_is_read_twice():
    model = _model()
    x, y = _data(24)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    tuner = kerastl.FineTuner(model, augmentation="orientation_free", cache_views=8, verbose=0)
    tuner.fit(data, stages=[kerastl.Stage(1)])
    assert tuner.stage_summaries[0]["cached"] == "pooled features"
    test = tf.data.Dataset.from_tensor_slices(_data(12)).batch(6)
    first = tuner.evaluate(test, tta=True)
    expected = kerastl.evaluate(model, test, tta="dihedral")
    np.testing.assert_array_equal(first.tta.matrix, expected.tta.matrix)
    np.testing.assert_array_equal(first.plain.matrix, expected.plain.matrix)
    with pytest.warns(UserWarning, match="evaluated before"):
        tuner.evaluate(test)


class _Stream:
    def __init__(self, terminal):
        self.terminal = terminal

    def isatty(self):
        return self.terminal


def test_auto_verbosity_is_a_bar_on_a_terminal_and_lines_in_a_log(monkeypatch, capsys):
    from kerastl._progress import Progress, resolve_verbose

    assert resolve_verbose("auto", _Stream(True)) == 1
    assert resolve_verbose("auto", _Stream(False)) == 2
    assert resolve_verbose(0) == 0
    with pytest.raises(ValueError, match=r"Received: verbose=3"):
        resolve_verbose(3)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    assert kerastl.FineTuner(_model(), verbose="auto").verbose == 1
    monkeypatch.setattr("sys.stdout.isatty", lambda: False, raising=False)
    assert kerastl.FineTuner(_model(), verbose="auto").verbose == 2
    monkeypatch.setitem(__import__("sys").modules, "ipykernel", object())  # a notebook redraws
    assert resolve_verbose("auto") == 1
    monkeypatch.delitem(__import__("sys").modules, "ipykernel")
    capsys.readouterr()

    progress = Progress("caching features", 4, 2, interval=0.0)  # a log: a line per update
    for step in range(1, 5):
        progress.update(step)
    progress.finish()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "kerastl: caching features (4 batches) ..." and len(lines) == 5
    assert lines[1].startswith("kerastl: caching features: 1/4 batches, ") and "s left" in lines[1]
    assert lines[-2].startswith("kerastl: caching features: 3/4 batches, ")  # 4/4: the closing line
    assert lines[-1].startswith("kerastl: caching features: 4 batches in ")
    quiet = Progress("caching", 4, 2, interval=3600.0, announce=False)  # none before the interval
    quiet.update(1)
    quiet.finish()
    (closing,) = capsys.readouterr().out.splitlines()
    assert closing.startswith("kerastl: caching: 1 batch in ")
    bar = Progress("caching", 3, 1)  # a terminal: Keras's progress bar, redrawn in place
    for step in range(1, 4):
        bar.update(step)
    bar.finish()
    drawn = capsys.readouterr().out
    assert drawn.startswith("kerastl: caching (3 batches) ...") and "3/3" in drawn


def test_evaluate_reports_its_progress_in_a_log_and_is_silent_at_zero(capsys):
    model = _model()
    x, y = _data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    kerastl.evaluate(model, data, tta="dihedral", verbose=2)
    assert "kerastl: evaluating over 8 test-time views: 4 batches in " in capsys.readouterr().out
    kerastl.evaluate(model, data, tta="dihedral", verbose=0)
    assert capsys.readouterr().out == ""


def test_the_report_s_confusion_matrix_runs_the_model_traced_once_not_eagerly_per_batch():
    from kerastl.training.run_directory import confusion_matrix

    model = _model()
    modes = []
    call = model.call

    def recording_call(*args, **kwargs):
        modes.append(tf.executing_eagerly())
        return call(*args, **kwargs)

    model.call = recording_call
    x, y = _data(18)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    matrix = confusion_matrix(model, data, 3)
    assert modes == [False]  # one trace serves all 3 batches (eager calls: [True] * 3)
    model.call = call
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (y, model.predict(x, verbose=0).argmax(-1)), 1)
    np.testing.assert_array_equal(matrix, expected)
