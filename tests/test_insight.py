"""What a run shows of its mistakes: Grad-CAM, temperature scaling, the report's look."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import small_convnext

import kerastl
from kerastl.training.calibration import (
    expected_calibration_error,
    fit_temperature,
    softmax,
)


def _squares(count, seed):
    """Noise images; class 1 holds a bright 8 x 8 square at a random place."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 100, (count, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 2, count)
    corners = rng.integers(0, 32 - 8, (count, 2))
    for image, label, (row, column) in zip(images, labels, corners, strict=True):
        if label:
            image[row : row + 8, column : column + 8] = 255.0
    return images, labels, corners


def _tiny_cnn_model():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    backbone = keras.Model(inputs, x, name="tiny_cnn")
    return kerastl.TransferModel(backbone, 2, preprocessing="tf", input_shape=(32, 32, 3))


@pytest.fixture(scope="module")
def square_model():
    keras.utils.set_random_seed(0)
    model = _tiny_cnn_model()
    images, labels, _ = _squares(512, 0)
    model.compile(keras.optimizers.Adam(3e-3))
    model.fit(images, labels, epochs=4, batch_size=32, verbose=0)
    return model


def test_gradcam_finds_the_square_that_decides_the_label(square_model):
    images, labels, corners = _squares(64, 1)
    assert (square_model.predict(images, verbose=0).argmax(1) == labels).mean() > 0.9
    maps = kerastl.gradcam(square_model, images, class_index=1)
    assert maps.shape == (64, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    inside = []
    for heat, label, (row, column) in zip(maps, labels, corners, strict=True):
        if label:
            peak_row, peak_column = np.unravel_index(heat.argmax(), heat.shape)
            inside.append(row <= peak_row < row + 8 and column <= peak_column < column + 8)
    assert np.mean(inside) > 0.8, np.mean(inside)  # measured: every one of 33


def test_gradcam_changes_when_the_head_is_randomized(square_model):
    """Adebayo et al. 2018: a saliency map that survives randomizing the weights
    explains the input, not the model. The maps of the predicted class under 8
    random heads against the trained head's: mean correlation under 0.5
    (measured 0.22; a constant map counts as uncorrelated)."""
    images, _, _ = _squares(32, 2)
    trained = kerastl.gradcam(square_model, images)
    head = square_model.head_layer
    kept = [np.array(v) for v in head.weights]
    correlations = []
    try:
        for seed in range(8):
            rng = np.random.default_rng(seed)
            head.kernel.assign(rng.normal(size=head.kernel.shape).astype("float32"))
            random = kerastl.gradcam(square_model, images)
            for a, b in zip(trained, random, strict=True):
                defined = a.std() > 0 and b.std() > 0
                correlations.append(np.corrcoef(a.ravel(), b.ravel())[0, 1] if defined else 0.0)
    finally:
        for variable, value in zip(head.weights, kept, strict=True):
            variable.assign(value)
    assert np.mean(correlations) < 0.5, np.mean(correlations)


def test_gradcam_picks_the_last_spatial_group_and_names_bad_requests():
    from kerastl.training.gradcam import last_spatial_group

    lite0 = kerastl.TransferModel("efficientnet-lite0", 3, weights=None, input_shape=(64, 64, 3))
    assert last_spatial_group(lite0) == "top_conv"
    assert last_spatial_group(lite0, min_size=4) == "block5"  # 4 x 4 at 64 px
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3))
    assert kerastl.gradcam(lite0, images, "block6", class_index=[0, 2]).shape == (2, 64, 64)
    with pytest.raises(ValueError, match=r"class_index.*\[0, 3\).*Received: class_index=3"):
        kerastl.gradcam(lite0, images, class_index=3)
    with pytest.raises(ValueError, match=r"Unknown|head"):
        kerastl.gradcam(lite0, images, "head")
    # By default the last map at least 7 x 7, as the report's and `kerastl explain`'s: a
    # ConvNeXt's last stage at 32 px is 1 x 1, and its map was 1.0 everywhere.
    convnext = small_convnext(layer_scale=1.0)
    assert last_spatial_group(convnext) == "post_norm"
    maps = kerastl.gradcam(convnext, images[:, :32, :32])
    # Spread over each map: 0.16-0.22 over 6 seeds; a constant map has 0.
    assert maps.shape == (2, 32, 32) and maps.std(axis=(1, 2)).min() > 0.01


def test_temperature_fits_the_likelihood_and_ece_measures_the_gap():
    # 3 of 4 right at equal logits: the best probability is 0.75, so 2 / T = ln 3.
    logits = np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert fit_temperature(logits, np.array([0, 0, 1, 1])) == pytest.approx(2 / np.log(3), 1e-5)
    # Two examples at confidence 0.9, one right: |0.5 - 0.9| = 0.4.
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert expected_calibration_error(probabilities, np.array([0, 1])) == pytest.approx(0.4)
    assert softmax(np.array([[0.0, np.log(3.0)]])) == pytest.approx(np.array([[0.25, 0.75]]))


def _overconfident(count, seed):
    """Logits 4x too large for their accuracy: a label follows the sign of a noisy score."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 4)).astype("float32")
    labels = (x[:, 0] + 0.8 * rng.normal(size=count) > 0).astype("int64")
    return x, labels


def test_calibrate_lowers_the_error_and_every_probability_uses_the_temperature(tmp_path):
    import kerastl.export as kx
    from kerastl.export.signatures import probabilities_of

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs))
    model = kerastl.TransferModel(backbone, 2, preprocessing="tf", input_shape=(8, 8, 3))
    scale = np.zeros((4, 2), "float32")
    scale[0] = [-6.0, 6.0]  # the first channel's mean decides, far too sure of itself
    model.head_layer.kernel.assign(scale)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (256, 8, 8, 3)).astype("float32")
    logits = np.asarray(model(images))
    labels = (logits[:, 1] - logits[:, 0] + 4 * rng.normal(size=256) > 0).astype("int64")
    validation = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
    result = kerastl.calibrate(model, validation)
    assert result.temperature > 1 and model.temperature == result.temperature
    assert result.ece_after < result.ece_before and result.nll_after < result.nll_before
    expected = softmax(logits / result.temperature)
    np.testing.assert_allclose(kerastl.predict_probabilities(model, images), expected, atol=1e-5)
    evaluation = kerastl.evaluate(model, validation, verbose=0)
    # float32 (evaluate) against float64 (calibrate) on the same logits: every
    # confidence is >= 2e-4 from a bin edge here, 1000x float32's rounding, so no
    # example changes bin and the two differ by rounding alone (measured 2e-9).
    assert evaluation.plain.ece == pytest.approx(result.ece_after, abs=1e-6)
    assert evaluation.plain.raw_ece == pytest.approx(result.ece_before, abs=1e-6)
    path = str(tmp_path / "model.keras")
    model.save(path)
    assert keras.models.load_model(path).temperature == model.temperature
    exported = kx.saved_model(model, tmp_path / "sm", signatures="image_tensor", samples=images)
    served = tf.saved_model.load(exported).signatures["image_tensor"](images=images[:16])
    np.testing.assert_allclose(served["probabilities"], expected[:16], atol=1e-4)
    np.testing.assert_allclose(served["logits"], logits[:16], atol=1e-4)  # logits stay raw
    assert np.allclose(probabilities_of(model, logits), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"temperature.*Received: temperature=0"):
        kerastl.TransferModel(backbone, 2, preprocessing="tf", temperature=0)


def test_a_temperature_at_the_search_bound_says_why():
    """A model wrong on most validation examples: its likelihood rises as its
    probabilities flatten, so the fit ends at T = 1100 (before, without a word)."""
    inputs = keras.Input((8, 8, 3))
    backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs))
    model = kerastl.TransferModel(backbone, 2, preprocessing="tf", input_shape=(8, 8, 3))
    images = np.random.default_rng(0).uniform(0, 255, (64, 8, 8, 3)).astype("float32")
    wrong = 1 - np.asarray(model(images)).argmax(-1)  # every prediction wrong
    result = kerastl.calibrate(model, tf.data.Dataset.from_tensor_slices((images, wrong)).batch(32))
    assert result.temperature > 1000 and "at the search's bound" in result.one_line()


def _explain_from_the_command_line(run, image, capsys):
    from PIL import Image

    from kerastl.app.cli import main

    path = run.parent / "square.png"
    Image.fromarray(image.astype("uint8")).save(path)
    capsys.readouterr()
    assert main(["explain", str(run), str(path), "--top", "2"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{path}: 1 0.") and line.endswith(str(run / "explain" / "square.png"))
    assert (run / "explain" / "square.png").stat().st_size > 10_000
    assert main(["explain", str(run), str(run / "missing.png")]) == 2


def test_the_run_report_looks_at_the_mistakes(tmp_path, capsys):
    from kerastl.training.insight import class_table, most_confused

    assert class_table(np.array([[8, 2], [1, 9]]), ["ok", "defect"])[2] == (
        "| ok | 0.889 | 0.800 | 0.842 | 10 |"
    )
    matrix = np.array([[8, 2, 0], [5, 5, 0], [0, 1, 9]])
    assert most_confused(matrix, ["a", "b", "c"]) == [("b", "a", 5), ("a", "b", 2), ("c", "b", 1)]
    keras.utils.set_random_seed(0)
    images, labels, _ = _squares(48, 3)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    model = _tiny_cnn_model()
    tuner = kerastl.FineTuner(model, run_dir=tmp_path / "run", verbose=0)
    tuner.fit(data, data, stages=[kerastl.Stage(2, train="all", lr=3e-3)], backup_dir=False)
    report = Path(tuner.write_report(data)).read_text()
    assert "| class | precision | recall | F1 | support |" in report
    assert "expected calibration error (15 bins)" in report
    for figure in ("top_losses.png", "gradcam.png", "calibration.png"):
        assert (tmp_path / "run" / figure).stat().st_size > 10_000, figure
    assert "Look at these first, the highest losses" in report
    _explain_from_the_command_line(tmp_path / "run", images[labels == 1][0], capsys)
    bare = kerastl.FineTuner(model, run_dir=tmp_path / "bare", verbose=0, calibrate=False)
    bare.fit(data, data, stages=[kerastl.Stage(1, lr=1e-3)], backup_dir=False)
    assert bare.calibration is None
    report = Path(bare.write_report(data, insight=False)).read_text()
    assert "what the model gets wrong" not in report
    assert not (tmp_path / "bare" / "top_losses.png").exists()
