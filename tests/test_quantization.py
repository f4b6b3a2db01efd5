"""int8 ONNX and LiteRT exports: published with their measurements, or refused by the gate."""

import json
import os
import platform

import keras
import numpy as np
import onnx
import pytest

import kerastl
import kerastl.export as kx
from kerastl.export.onnx_runtime import onnx_session
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


def _report(path):
    with open(path + ".quantization.json") as file:
        return json.load(file)


@pytest.mark.slow
def test_an_int8_onnx_export_is_published_with_what_was_measured(lite0, tmp_path):
    model, images, labels = lite0
    path = kx.onnx(
        model, str(tmp_path / "m.int8.onnx"), samples=(images, labels), quantize="int8",
        max_accuracy_drop=1.0, min_agreement=0.0, calibration_size=40,
    )  # fmt: skip
    report = _report(path)
    assert report["passed"] and report["calibration_samples"] == 40
    assert report["scored_samples"] == 56  # the others: not scored on what it calibrated on
    assert report["quantized_size_mb"] < 0.4 * report["float_size_mb"]
    assert 0.5 <= report["agreement"] <= 1.0 and report["float_accuracy"] is not None
    expected = kerastl.predict_probabilities(model, images[40:]).argmax(-1)
    assert report["float_accuracy"] == pytest.approx(np.mean(expected == labels[40:]), abs=1e-9)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not os.path.exists(tmp_path / "m.int8.onnx.parity.json")  # float parity: not this file's


@pytest.mark.slow
def test_the_gate_refuses_a_quantized_export_outside_its_bounds_and_publishes_nothing(
    near_tie, lite0, tmp_path
):
    _, images, labels = lite0
    path = str(tmp_path / "tie.int8.onnx")
    with pytest.raises(kx.QuantizationError, match=r"top-1 agreement .* under min_agreement=0.98"):
        kx.onnx(near_tie, path, samples=(images, labels), quantize="int8", calibration_size=40)
    assert not os.path.exists(path)
    report = _report(path)
    assert not report["passed"] and report["agreement"] < 0.9
    litert_path = str(tmp_path / "tie.int8.tflite")
    with pytest.raises(kx.QuantizationError) as refused:
        kx.litert(near_tie, litert_path, samples=(images, labels), quantize="int8")
    assert not os.path.exists(litert_path)
    assert refused.value.report.agreement < 0.9 and not _report(litert_path)["passed"]
    # Each file keeps its own report (before: both were tie.int8.quantization.json, and
    # the LiteRT export overwrote the ONNX one's measurements).
    assert _report(path)["method"].startswith("onnxruntime")
    assert not _report(litert_path)["method"].startswith("onnxruntime")


@pytest.mark.slow
def test_litert_float_matches_keras_and_its_quantized_files_run_in_the_litert_interpreter(
    lite0, tmp_path
):
    model, images, labels = lite0
    path = kx.litert(model, str(tmp_path / "m.tflite"), samples=images[:8])
    with open(tmp_path / "m.tflite.parity.json") as file:
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
    assert _report(half)["agreement"] >= 0.98
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


# === Text: dynamic int8 of every weight matrix ===


def _gemm_graph():
    """`x [batch, 8]` through three `Gemm`s: a kernel and a bias; a bias-less
    one with `beta=0`, as tf2onnx writes attention projections; and a
    `beta=0.5` one, which the fix must leave as it is."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.uniform(-1, 1, (8, 8)), "b1": rng.uniform(-1, 1, 8),
        "w2": rng.uniform(-1, 1, (8, 8)), "w3": rng.uniform(-1, 1, (8, 8)),
    }  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="g1", transB=1),
        helper.make_node("Gemm", ["h1", "w2"], ["h2"], name="g2", beta=0.0),
        helper.make_node("Gemm", ["h2", "w3", "b1"], ["y"], name="g3", beta=0.5),
    ]
    graph = helper.make_graph(
        nodes, "gemms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(value.astype("float32"), name) for name, value in weights.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ops(proto):
    return [node.op_type for node in proto.graph.node]


def test_dynamic_int8_leaves_a_gemm_with_beta_0_in_float_and_the_fix_lets_it_quantize(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from kerastl.export.onnxruntime_fixes import unused_gemm_beta

    def run(proto, x):
        onnx.save(proto, tmp_path / "run.onnx")
        return onnx_session(str(tmp_path / "run.onnx")).run(["y"], {"x": x})[0]

    def quantized(proto, name):
        onnx.save(proto, tmp_path / f"{name}.onnx")
        quantize_dynamic(tmp_path / f"{name}.onnx", tmp_path / f"{name}.int8.onnx",
                         per_channel=True, weight_type=QuantType.QInt8)  # fmt: skip
        return onnx.load(tmp_path / f"{name}.int8.onnx")

    x = np.random.default_rng(1).uniform(-1, 1, (16, 8)).astype("float32")
    # The gap: onnxruntime quantizes g1 (beta 1) and passes over g2 (beta 0, no C).
    as_is = _ops(quantized(_gemm_graph(), "as_is"))
    assert as_is.count("MatMulInteger") == 1 and as_is.count("Gemm") == 2

    proto = _gemm_graph()
    assert unused_gemm_beta(proto) == 1
    g2 = proto.graph.node[1]
    assert list(g2.input) == ["h1", "w2"] and [a.name for a in g2.attribute] == []
    # The same function (a kernel may order its sums otherwise: float32 rounding).
    np.testing.assert_allclose(run(proto, x), run(_gemm_graph(), x), rtol=1e-6, atol=1e-6)
    int8 = _ops(quantized(proto, "fixed"))
    assert int8.count("MatMulInteger") == 2 and int8.count("Gemm") == 1  # g3 (beta 0.5) stays
    # 8-bit weights and activations: steps of ~1/255 of each factor's range,
    # through three layers whose outputs are of size ~10: 0.5 is loose but real.
    np.testing.assert_allclose(run(quantized(proto, "fixed"), x), run(proto, x), atol=0.5)


def _x86_without_vnni() -> bool:
    """Whether this is an x86 CPU on which onnxruntime's int8 kernels add uint8 x int8
    products in pairs in saturating int16 (no AVX-VNNI or AVX512-VNNI)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    with open("/proc/cpuinfo") as cpuinfo:
        flags = next((line.split() for line in cpuinfo if line.startswith("flags")), [])
    return "avx_vnni" not in flags and "avx512_vnni" not in flags


def test_int8_convolutions_saturate_in_plain_sessions_without_vnni_not_in_kerastl_s(tmp_path):
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(0)
    kernel = numpy_helper.from_array(rng.uniform(-1, 1, (16, 32, 3, 3)).astype("float32"), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16, 8, 8])], [kernel],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "f.onnx")
    x = rng.uniform(0, 1, (20, 32, 8, 8)).astype("float32")

    class Calibration:
        rows = iter(x)

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {"x": row[None]}

    # kerastl's image settings (onnx_export.quantize_onnx): int8 per-channel weights, uint8 inputs.
    quantize_static(tmp_path / "f.onnx", tmp_path / "q.onnx", Calibration(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
    float_y = onnx_session(str(tmp_path / "f.onnx")).run(["y"], {"x": x})[0]
    plain = onnxruntime.InferenceSession(tmp_path / "q.onnx", providers=["CPUExecutionProvider"])
    plain_error = np.abs(plain.run(["y"], {"x": x})[0] - float_y).max()
    kerastl_y = onnx_session(str(tmp_path / "q.onnx")).run(["y"], {"x": x})[0]
    kerastl_error = np.abs(kerastl_y - float_y).max()
    # Outputs reach ~25; 8-bit steps of each factor's range put exact int8 within ~0.2 of
    # float (0.16 measured), and saturating int16 pairs 2.1 off (Zen 3).
    assert np.abs(float_y).max() > 15
    assert kerastl_error < 0.5
    if _x86_without_vnni():  # onnxruntime's gap, which kerastl's sessions close (onnxruntime_fixes)
        assert plain_error > 1.0
    else:
        assert plain_error < 0.5


@pytest.mark.slow
def test_a_text_model_int8_onnx_quantizes_every_dense_layer(tmp_path):
    backbone = kerastl.create_backbone(
        "all-minilm-l6-v2", weights=None, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32,
    )  # fmt: skip
    keras.utils.set_random_seed(0)
    model = kerastl.TransferModel(backbone, num_classes=2, pooling="mean", class_names=["a", "b"])
    rng = np.random.default_rng(0)
    tokens = {
        "token_ids": rng.integers(1, 1000, (40, 12), np.int32),
        "padding_mask": np.ones((40, 12), np.int32),
        "segment_ids": np.zeros((40, 12), np.int32),
    }
    labels = model.predict(tokens, verbose=0).argmax(-1)
    path = kx.onnx(
        model, str(tmp_path / "t.int8.onnx"), samples=(tokens, labels), quantize="int8",
        max_accuracy_drop=1.0, min_agreement=0.0,
    )  # fmt: skip
    ops = _ops(onnx.load(path))
    # Per layer: query, key, value, output (tf2onnx's Gemm) and the two feed-forward
    # kernels; then the head: every weight matrix is int8.
    assert "Gemm" not in ops and ops.count("MatMulInteger") == 2 * 6 + 1
    report = _report(path)
    assert report["method"] == "onnxruntime dynamic int8 (per-channel weights)"
    # Nothing calibrates dynamic int8: every labelled sample scores it.
    assert report["calibration_samples"] == 0 and report["scored_samples"] == 40
    assert report["float_accuracy"] is not None and report["passed"]
