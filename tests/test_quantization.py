"""int8 ONNX and LiteRT exports: published with their measurements, or refused by the gate."""

import json
import os

import keras
import numpy as np
import onnx
import pytest

import kerastl
import kerastl.export as kx
from kerastl.export.quantization import QuantizationReport

SIZE = 48


def _images(count, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def lite0():
    """Lite0 with its ImageNet weights and a random head, and 96 labelled images
    (labels: its own predictions, a quarter of them changed)."""
    keras.utils.set_random_seed(0)
    model = kerastl.TransferModel(
        "efficientnet-lite0", num_classes=2, input_shape=(SIZE, SIZE, 3), class_names=["a", "b"]
    )
    kernel, bias = model.head_layer.get_weights()
    model.head_layer.set_weights([np.random.default_rng(0).normal(0, 0.1, kernel.shape), bias])
    images = _images(96)
    labels = model.predict(images, verbose=0).argmax(-1)
    labels[::4] = 1 - labels[::4]
    return model, images, labels


@pytest.fixture(scope="module")
def near_tie(lite0):
    """The same network with two nearly equal head columns: in float the tiny
    difference picks the class, in int8 both logits round to the same value
    and the first class wins, so about half the predictions flip."""
    model, images, _ = lite0
    tie = kerastl.TransferModel(
        "efficientnet-lite0", num_classes=2, input_shape=(SIZE, SIZE, 3), class_names=["a", "b"]
    )
    kernel, bias = model.head_layer.get_weights()
    close = np.stack([kernel[:, 0], kernel[:, 0] + 1e-4 * kernel[:, 1]], axis=1)
    tie.head_layer.set_weights([close, np.zeros_like(bias)])
    logits = tie.predict(images, verbose=0)
    middle = np.median(logits[:, 1] - logits[:, 0])  # centred: half the images each way
    tie.head_layer.set_weights([close, np.array([0.0, -middle], bias.dtype)])
    predicted = tie.predict(images, verbose=0).argmax(-1)
    assert 0.2 < predicted.mean() < 0.8  # both classes, so flips to the first one show
    return tie


def _report(path, suffix):
    with open(path[: -len(suffix)] + ".quantization.json") as file:
        return json.load(file)


@pytest.mark.slow
def test_an_int8_onnx_export_is_published_with_what_was_measured(lite0, tmp_path):
    model, images, labels = lite0
    path = kx.onnx(
        model, str(tmp_path / "m.int8.onnx"), samples=(images, labels), quantize="int8",
        max_accuracy_drop=1.0, min_agreement=0.0, calibration_size=40,
    )  # fmt: skip
    report = _report(path, ".onnx")
    assert report["passed"] and report["calibration_samples"] == 40
    assert report["scored_samples"] == 56  # the others: not scored on what it calibrated on
    assert report["quantized_size_mb"] < 0.4 * report["float_size_mb"]
    assert 0.5 <= report["agreement"] <= 1.0 and report["float_accuracy"] is not None
    expected = kerastl.predict_probabilities(model, images[40:]).argmax(-1)
    assert report["float_accuracy"] == pytest.approx(np.mean(expected == labels[40:]), abs=1e-9)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not os.path.exists(tmp_path / "m.int8.parity.json")  # float parity is not this file's


@pytest.mark.slow
def test_the_gate_refuses_a_quantized_export_outside_its_bounds_and_publishes_nothing(
    near_tie, lite0, tmp_path
):
    _, images, labels = lite0
    path = str(tmp_path / "tie.int8.onnx")
    with pytest.raises(kx.QuantizationError, match=r"top-1 agreement .* under min_agreement=0.98"):
        kx.onnx(near_tie, path, samples=(images, labels), quantize="int8", calibration_size=40)
    assert not os.path.exists(path)
    report = _report(path, ".onnx")
    assert not report["passed"] and report["agreement"] < 0.9
    litert_path = str(tmp_path / "tie.int8.tflite")
    with pytest.raises(kx.QuantizationError) as refused:
        kx.litert(near_tie, litert_path, samples=(images, labels), quantize="int8")
    assert not os.path.exists(litert_path)
    assert refused.value.report.agreement < 0.9 and not _report(litert_path, ".tflite")["passed"]


@pytest.mark.slow
def test_litert_float_matches_keras_and_its_quantized_files_run_in_the_litert_interpreter(
    lite0, tmp_path
):
    model, images, labels = lite0
    path = kx.litert(model, str(tmp_path / "m.tflite"), samples=images[:8])
    with open(tmp_path / "m.parity.json") as file:
        parity = json.load(file)
    assert parity["passed"] and parity["results"][0]["max_abs_diff"] <= 1e-4
    served = kx.run_litert(path, images[:8])
    expected = kerastl.predict_probabilities(model, images[:8])
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-4)
    assert set(served) == {"logits", "probabilities", "class_id", "top_k_probabilities"}

    half = kx.litert(
        model, str(tmp_path / "m.float16.tflite"), samples=(images, labels), quantize="float16"
    )
    assert os.path.getsize(half) < 0.55 * os.path.getsize(path)
    assert _report(half, ".tflite")["agreement"] >= 0.98
    int8 = kx.litert(
        model, str(tmp_path / "m.int8.tflite"), samples=(images, labels), quantize="int8",
        max_accuracy_drop=1.0, min_agreement=0.0,
    )  # fmt: skip
    from ai_edge_litert.interpreter import Interpreter

    types = {detail["dtype"] for detail in Interpreter(model_path=int8).get_tensor_details()}
    assert np.int8 in types and os.path.getsize(int8) < 0.4 * os.path.getsize(path)
    assert kx.run_litert(int8, images[:3])["probabilities"].shape == (3, 2)


def test_quantized_exports_refuse_arguments_they_cannot_use(lite0, tmp_path):
    model, images, labels = lite0
    with pytest.raises(ValueError, match=r"`quantize` must be one of \(None, 'int8'\)"):
        kx.onnx(model, str(tmp_path / "m.onnx"), quantize="float16")
    with pytest.raises(ValueError, match="needs real `samples`"):
        kx.onnx(model, str(tmp_path / "m.onnx"), quantize="int8")
    with pytest.raises(ValueError, match=r"`min_agreement` must be a number in \[0, 1\]"):
        kx.litert(
            model, str(tmp_path / "m.tflite"), samples=images, quantize="int8", min_agreement=2
        )
    with pytest.raises(ValueError, match=r"at least 16 `samples`.*Received: 10"):
        kx.litert(model, str(tmp_path / "m.tflite"), samples=images[:10], quantize="int8")
    with pytest.raises(ValueError, match="96 inputs but 95 labels"):
        kx.onnx(model, str(tmp_path / "m.onnx"), samples=(images, labels[:95]), quantize="int8")
    with pytest.raises(ValueError, match=r"must end in '\.tflite'"):
        kx.litert(model, str(tmp_path / "m.onnx"))
    regression = kerastl.TransferModel(
        "mobilenetv3small", num_classes=1, task="regression", weights=None, input_shape=(32, 32, 3)
    )
    with pytest.raises(ValueError, match=r"single-label classification only.*regression"):
        kx.onnx(regression, str(tmp_path / "r.onnx"), samples=images[:, :32, :32], quantize="int8")
    assert os.listdir(tmp_path) == []


def test_the_gate_names_the_bound_that_failed():
    report = QuantizationReport(
        target="m.int8.onnx", method="test", calibration_samples=10, scored_samples=100,
        float_accuracy=0.90, quantized_accuracy=0.85, agreement=0.99, max_abs_diff=0.1,
        float_size_mb=4.0, quantized_size_mb=1.0, float_latency_ms=2.0,
        quantized_latency_ms=1.0, max_accuracy_drop=0.01, min_agreement=0.98,
    )  # fmt: skip
    assert report.accuracy_drop == pytest.approx(0.05)
    assert "accuracy dropped by 0.0500 (0.9000 -> 0.8500)" in report.failure()
    within = QuantizationReport(**{**report.__dict__, "quantized_accuracy": 0.895})
    assert within.passed and within.failure() is None
    unlabelled = QuantizationReport(
        **{**report.__dict__, "float_accuracy": None, "quantized_accuracy": None, "agreement": 0.9}
    )
    assert "agreement with the float model is 0.9000" in unlabelled.failure()
    assert unlabelled.to_dict()["accuracy_drop"] is None and not unlabelled.to_dict()["passed"]
