"""Export: SavedModel signatures, the TF Serving bundle, ONNX, parity gate."""

import json
import os
import subprocess
import sys
import textwrap
import types
import warnings
from collections import Counter

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from _workload import stored_values
from checks import TINY_TEXT, small_convnext
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import loader_impl
from tensorflow_serving.config import model_server_config_pb2

import kerastl
import kerastl.export as kx
from kerastl import _atomic
from kerastl.data.pipeline import resized_rgb
from kerastl.export import bundle as bundle_module
from kerastl.export import onnx_export
from kerastl.export.requests import (
    encode_images,
    predict_request,
    read_warmup,
    request_arrays,
    rest_body,
    run_signature,
    signature_inputs,
)
from kerastl.export.samples import detokenized

SIZE = 64
CLASSES = ["functional", "crack", "dark"]


def _images(count, seed=0, size=SIZE):
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def _tiny_image_model():
    """MobileNetV3-Small with random weights, its BatchNorm statistics set from one batch.

    Random weights alone make its features vanish (~1e-11), and every export
    would then "match" whatever it is compared with.
    """
    model = kerastl.TransferModel(
        "mobilenetv3small", num_classes=2, weights=None, input_shape=(32, 32, 3)
    )
    layers = model._flatten_layers()
    norms = [x for x in layers if isinstance(x, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(_images(16, seed=9, size=32), training=True)
    for layer in norms:
        layer.momentum = 0.99
    assert np.ptp(model.predict(_images(4, size=32), verbose=0)) > 1.0
    return model


@pytest.fixture(scope="module")
def tiny_model():
    """One `_tiny_image_model()` for the tests that export it without changing it."""
    return _tiny_image_model()


@pytest.fixture(scope="module")
def lite0():
    """EfficientNet-Lite0 with its real ImageNet weights and a fitted-looking head."""
    keras.utils.set_random_seed(0)
    model = kerastl.TransferModel(
        "efficientnet-lite0", num_classes=3, input_shape=(SIZE, SIZE, 3), class_names=CLASSES
    )
    kernel, bias = model.head_layer.get_weights()
    model.head_layer.set_weights([np.random.default_rng(0).normal(0, 0.05, kernel.shape), bias])
    return model


@pytest.fixture(scope="module")
def bundle(lite0, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    version = kx.serving_bundle(
        lite0,
        base,
        "elpv",
        signatures=("image_bytes", "image_tensor", "tf_example"),
        samples=_images(6),
        warmup_requests=3,
    )
    return base, version


@pytest.fixture(scope="module")
def loaded_bundle(bundle):
    """The bundle's SavedModel, loaded once for the tests that only call it."""
    return tf.saved_model.load(bundle[1])


@pytest.mark.slow
def test_every_image_signature_reloads_and_matches_keras(lite0, bundle, loaded_bundle):
    _, version = bundle
    loaded = loaded_bundle
    assert set(loaded.signatures) == {
        "serving_default",
        "image_bytes",
        "image_tensor",
        "tf_example",
    }
    default_inputs = loaded.signatures["serving_default"].structured_input_signature[1]
    assert list(default_inputs) == ["image_bytes"]  # the first named signature

    images = _images(3, seed=1)
    expected = lite0.predict(images, verbose=0)
    out = run_signature(loaded.signatures["image_tensor"], {"images": images})
    np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(expected), atol=1e-5)
    assert out["logits"].dtype == np.float32
    np.testing.assert_array_equal(out["class_id"], expected.argmax(-1))
    names = np.array(CLASSES)[np.argsort(-expected, axis=-1)]
    np.testing.assert_array_equal(out["class_name"].astype(str), names)
    # Each weight stored once (keras_export_fixes), in the collections `track` makes.
    assert stored_values(version) < 1.001 * lite0.count_params()
    assert len(loaded.variables) == len(lite0.variables)
    assert len(loaded.trainable_variables) == len(lite0.trainable_variables)


class _Lookup(keras.layers.Layer):
    """Adds a value read from a lookup table: a resource the SavedModel must track."""

    def __init__(self):
        super().__init__()
        keys, values = tf.constant([0, 1], tf.int64), tf.constant([5.0, 7.0])
        initializer = tf.lookup.KeyValueTensorInitializer(keys, values)
        self.table = tf.lookup.StaticHashTable(initializer, 0.0)

    def call(self, x):
        return x + self.table.lookup(tf.ones_like(x[:, :1], tf.int64))


def test_keras_track_stores_every_weight_twice_and_the_fix_once(tmp_path):
    from kerastl.export.keras_export_fixes import track_model

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(_Lookup()(inputs)))
    serve = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec((None, 3))])
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    stored = {}
    for name in ("keras", "fix"):
        archive = keras.export.ExportArchive()
        archive.track(model) if name == "keras" else track_model(archive, model)
        archive.add_endpoint("serve", serve)
        archive.write_out(tmp_path / name, verbose=False)
        loaded = tf.saved_model.load(tmp_path / name)
        # The table came along (its 7 added to every input): outputs ~10, a few ulps apart.
        np.testing.assert_allclose(loaded.serve(x), model(x), rtol=1e-5, atol=1e-5)
        assert len(loaded.variables) == len(loaded.trainable_variables) == 2
        stored[name] = stored_values(tmp_path / name)
    assert stored == {"keras": 2 * model.count_params(), "fix": model.count_params()}


def test_image_bytes_decodes_jpeg_and_png_of_different_sizes_like_outside_the_graph(
    lite0, loaded_bundle
):
    loaded = loaded_bundle
    encoded = [
        encode_images(_images(1, seed=2, size=80), "jpeg")[0],
        encode_images(_images(1, seed=3, size=50), "png")[0],
        encode_images(np.zeros((1, 64, 96, 3)) + 128, "png")[0],
    ]
    decoded = np.stack(
        [
            resized_rgb(tf.io.decode_image(data, channels=3), (SIZE, SIZE)).numpy()
            for data in encoded
        ]
    )
    expected = lite0.predict(decoded, verbose=0)
    inputs = {"image_bytes": np.array(encoded, dtype=object)}
    np.testing.assert_allclose(
        run_signature(loaded.signatures["image_bytes"], inputs)["logits"], expected, atol=1e-5
    )
    examples = signature_inputs("tf_example", decoded)
    from_examples = run_signature(loaded.signatures["tf_example"], examples)["logits"]
    jpeg = signature_inputs("image_bytes", decoded)  # the same JPEG bytes inside the examples
    from_bytes = run_signature(loaded.signatures["image_bytes"], jpeg)["logits"]
    np.testing.assert_allclose(from_examples, from_bytes, atol=1e-6)


@pytest.mark.slow
def test_image_bytes_can_resize_as_keras_s_image_dataset_from_directory(tiny_model, tmp_path):
    """A model trained on `keras.utils.image_dataset_from_directory` (no
    antialiasing) and served from bytes resized with antialiasing saw other
    pixels: up to 0.22 in probability on a user's folder. `antialias=False`
    serves what it was trained on."""
    photo = np.random.default_rng(4).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    (tmp_path / "photos" / "only").mkdir(parents=True)
    data = tf.io.encode_png(photo).numpy()
    (tmp_path / "photos" / "only" / "a.png").write_bytes(data)
    keras_batch = next(
        iter(keras.utils.image_dataset_from_directory(tmp_path / "photos", image_size=(32, 32)))
    )[0]
    antialiased = resized_rgb(photo, (32, 32))
    assert np.abs(antialiased - keras_batch[0]).mean() > 10  # noise: the two resizes differ
    path = kx.saved_model(
        tiny_model,
        tmp_path / "served",
        ("image_bytes", "tf_example"),
        samples=_images(2, size=32),
        antialias=False,
        verbose=0,
    )
    loaded = tf.saved_model.load(path)
    expected = tiny_model.predict(keras_batch, verbose=0)
    served = run_signature(loaded.signatures["image_bytes"], {"image_bytes": np.array([data])})
    np.testing.assert_allclose(served["logits"], expected, atol=1e-5)
    example = tf.train.Example(
        features=tf.train.Features(
            feature={"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))}
        )
    ).SerializeToString()
    from_example = run_signature(loaded.signatures["tf_example"], {"examples": np.array([example])})
    np.testing.assert_allclose(from_example["logits"], expected, atol=1e-5)
    with pytest.raises(
        ValueError, match=r"`antialias` must be True or False. Received: antialias='no'"
    ):
        kx.saved_model(tiny_model, tmp_path / "never", antialias="no")


def test_bundle_layout_models_config_and_parity_report(bundle):
    base, version = bundle
    assert version == str(base / "elpv" / "1")
    assert sorted(os.listdir(base / "elpv")) == ["1"]  # no temporary directory left
    config = text_format.Parse(
        (base / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (entry,) = config.model_config_list.config
    assert entry.name == "elpv" and entry.base_path == str(base / "elpv")
    assert entry.model_version_policy.latest.num_versions == 2
    parity = json.loads((base / "elpv/1/assets.extra/parity.json").read_text())
    assert parity["passed"] and parity["results"][0]["max_abs_diff"] < 1e-5
    assert parity["samples"] == 6 and parity["results"][0]["target"] == version


def test_requests_match_the_signature_defs_and_the_recorded_responses(bundle, loaded_bundle):
    _, version = bundle
    signature_defs = loader_impl.parse_saved_model(version).meta_graphs[0].signature_def
    loaded = loaded_bundle
    requests = os.path.join(version, "assets.extra", "requests")
    for name in ("image_bytes", "image_tensor", "tf_example"):
        with open(os.path.join(requests, f"{name}.json")) as file:
            body = json.load(file)
        with open(os.path.join(requests, f"{name}.response.json")) as file:
            response = json.load(file)
        assert body["signature_name"] == name
        defined = signature_defs[name].inputs
        assert set(body["instances"][0]) == set(defined)
        if name != "image_tensor":
            assert set(body["instances"][0][next(iter(defined))]) == {"b64"}
        grpc = predict_request("elpv", name, _decode_rest_instances(body))
        for key, tensor in grpc.inputs.items():
            assert tensor.dtype == defined[key].dtype
        answer = run_signature(loaded.signatures[name], request_arrays(grpc))
        expected = np.array([row["probabilities"] for row in response["predictions"]])
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-6)
        assert response["predictions"][0]["class_name"][0] in CLASSES


def _decode_rest_instances(body):
    import base64

    rows = body["instances"]
    decoded = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if isinstance(values[0], dict):
            decoded[key] = np.array([base64.b64decode(v["b64"]) for v in values], dtype=object)
        else:
            decoded[key] = np.array(values, np.float32)
    return decoded


def test_warmup_file_parses_and_every_request_runs(bundle, loaded_bundle):
    _, version = bundle
    requests = read_warmup(os.path.join(version, "assets.extra", "tf_serving_warmup_requests"))
    assert Counter(r.model_spec.signature_name for r in requests) == {
        "image_bytes": 3,
        "image_tensor": 3,
        "tf_example": 3,
    }
    loaded = loaded_bundle
    for request in requests:
        assert request.model_spec.name == "elpv"
        out = run_signature(
            loaded.signatures[request.model_spec.signature_name], request_arrays(request)
        )
        assert out["probabilities"].shape == (1, 3)
        np.testing.assert_allclose(out["probabilities"].sum(), 1.0, atol=1e-5)


@pytest.mark.slow
def test_saved_model_cli_runs_the_bundle(lite0, bundle, tmp_path):
    _, version = bundle
    images = _images(2, seed=4)
    np.save(tmp_path / "images.npy", images)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [cli, "run", "--dir", version, "--tag_set", "serve", "--signature_def", "image_tensor",
         "--inputs", f"images={tmp_path / 'images.npy'}", "--outdir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    logits = np.load(tmp_path / "out" / "logits.npy")
    np.testing.assert_allclose(logits, lite0.predict(images, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_onnx_export_matches_keras_with_named_dynamic_batch(lite0, tmp_path):
    import onnxruntime

    path = kx.onnx(lite0, tmp_path / "lite0.onnx", samples=_images(4))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (image_input,) = session.get_inputs()
    assert image_input.name == "images" and image_input.shape == ["batch", SIZE, SIZE, 3]
    assert {o.name for o in session.get_outputs()} == {
        "logits", "probabilities", "class_id", "top_k_probabilities"
    }  # fmt: skip
    images = _images(5, seed=5)
    probabilities = session.run(["probabilities"], {"images": images})[0]
    expected = tf.nn.softmax(lite0.predict(images, verbose=0)).numpy()
    assert np.abs(probabilities - expected).max() <= 1e-4
    np.testing.assert_array_equal(probabilities.argmax(-1), expected.argmax(-1))
    report = json.loads((tmp_path / "lite0.onnx.parity.json").read_text())
    assert report["passed"] and report["results"][0]["top1_agreement"] == 1.0


@pytest.mark.slow
def test_onnx_refuses_a_graph_with_a_decode_op_and_writes_nothing(lite0, tmp_path):
    with pytest.raises(kx.UnsupportedOpsError, match="DecodeImage") as caught:
        kx.onnx(lite0, tmp_path / "bytes.onnx", signature="image_bytes")
    assert "DecodeImage" in caught.value.ops
    assert os.listdir(tmp_path) == []


def test_a_grouped_convolution_traced_for_export_computes_as_keras_s():
    """A multiplier of 2 (two filters a group): output channel `c * 2 + k` reads input
    channel `c`, in Keras's grouped kernel and in the depthwise one it becomes."""
    from kerastl.export.keras_export_fixes import grouped_convolutions_without_xla
    from kerastl.export.serving_ops import XLA_JIT_FUNCTION, graph_ops

    layer = keras.layers.Conv2D(8, 3, groups=4, padding="same")
    images = tf.constant(np.random.default_rng(0).uniform(0, 1, (2, 9, 9, 4)), tf.float32)
    expected = layer(images).numpy()  # Keras's XLA function
    with grouped_convolutions_without_xla():
        traced = tf.function(layer).get_concrete_function(tf.TensorSpec((None, 9, 9, 4)))
    assert XLA_JIT_FUNCTION not in graph_ops(traced.graph.as_graph_def())
    # Sums of 3 x 3 products of O(1) values, in two orders: float32 rounding.
    np.testing.assert_allclose(traced(images).numpy(), expected, atol=1e-5)


@pytest.mark.slow
def test_a_convnext_exports_without_xla_and_converts_to_onnx(tmp_path):
    """Keras runs ConvNeXt's grouped 7x7 convolutions as XLA-compiled functions, which
    stock TF Serving refuses ("XLA compilation disabled") and tf2onnx cannot convert;
    its exact GELU is `Erfc`, which tf2onnx has no handler for; and tf2onnx made its
    normalization's captured mean and variance graph inputs. Layer scales of 1 make
    the blocks count, so a wrong depthwise kernel would fail the parity checks."""
    import onnxruntime
    import tf2onnx

    from kerastl.export.serving_ops import XLA_JIT_FUNCTION, graph_ops
    from kerastl.export.signatures import serving_function
    from kerastl.export.tf2onnx_fixes import erfc_as_one_minus_erf

    model = small_convnext(layer_scale=1.0)
    images = _images(8, size=32)
    spec = tf.TensorSpec((None, 32, 32, 3))
    keras_graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    assert XLA_JIT_FUNCTION in graph_ops(keras_graph.graph.as_graph_def())  # Keras's own trace
    # Outputs that differ between images (logit spreads 0.39-0.78 over 6 seeds): parity can fail.
    assert np.std(model.predict(images, verbose=0), axis=0).min() > 0.01

    saved = kx.saved_model(model, tmp_path / "saved", samples=images, verbose=0)
    assert kx.scan_serving_ops(saved) == {}

    path = kx.onnx(model, tmp_path / "convnext.onnx", samples=images, verbose=0)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert json.loads((tmp_path / "convnext.onnx.parity.json").read_text())["passed"]

    with pytest.raises(kx.UnsupportedOpsError, match="Erfc"):  # tf2onnx alone
        kx.onnx(model, tmp_path / "unfixed.onnx", samples=images, fixes=False, verbose=0)
    function = serving_function(model, "image_tensor", numeric_only=True)
    with erfc_as_one_minus_erf():
        proto, _ = tf2onnx.convert.from_function(function, function.input_signature, opset=17)
    assert len(proto.graph.input) == 3  # images, and the captured mean and variance


def test_undefined_op_detection_names_decode_jpeg():
    import tf2onnx

    function = tf.function(
        lambda data: tf.cast(tf.io.decode_jpeg(data[0], channels=3), tf.float32),
        input_signature=[tf.TensorSpec((None,), tf.string)],
    )
    proto, _ = tf2onnx.convert.from_function(function, function.input_signature, opset=17)
    assert "DecodeJpeg" in onnx_export.undefined_ops(proto)


@pytest.mark.slow
def test_a_failing_parity_check_refuses_to_publish(tiny_model, tmp_path, monkeypatch):
    model = tiny_model
    other = _tiny_image_model()
    kernel, bias = other.head_layer.get_weights()
    other.head_layer.set_weights([np.random.default_rng(1).normal(size=kernel.shape), bias])
    convert = onnx_export.convert
    monkeypatch.setattr(onnx_export, "convert", lambda model, *a, **k: convert(other, *a, **k))
    with pytest.raises(kx.ParityError, match="FAILED"):
        kx.onnx(model, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
    assert not json.loads((tmp_path / "model.onnx.parity.json").read_text())["passed"]


@pytest.mark.slow
def test_transpose_fix_removes_mobilenetv3_transposes_and_keeps_parity(tiny_model, tmp_path):
    model = kx.float32_copy(tiny_model)
    unfixed = onnx_export.convert(model, "image_tensor", 17, fixes=False)
    fixed = onnx_export.convert(model, "image_tensor", 17)
    count = lambda proto: sum(n.op_type == "Transpose" for n in proto.graph.node)  # noqa: E731
    assert count(unfixed) > 50 and count(fixed) <= 1
    (tmp_path / "fixed.onnx").write_bytes(fixed.SerializeToString())
    assert kx.check_parity(model, tmp_path / "fixed.onnx").passed


@pytest.mark.slow
def test_mixed_precision_model_exports_float32(tmp_path):
    kerastl.set_precision("mixed_float16")
    try:
        mixed = _tiny_image_model()
    finally:
        kerastl.set_precision("float32")
    assert mixed.backbone.layers[-1].compute_dtype == "float16"
    copy = kx.float32_copy(mixed)
    assert {layer.compute_dtype for layer in copy._flatten_layers()} == {"float32"}
    for a, b in zip(copy.weights, mixed.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    path = kx.saved_model(mixed, tmp_path / "sm", signatures="image_tensor")
    signature = tf.saved_model.load(path).signatures["image_tensor"]
    graph = signature.graph.as_graph_def()
    half = [n.name for f in graph.library.function for n in f.node_def if n.attr["T"].type == 19]
    assert half == []  # 19: DT_HALF
    images = _images(2, size=32)
    out = signature(images=images)["logits"]
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out, copy.predict(images, verbose=0), atol=1e-5)
    # A text model's copy keeps the tokenizer it trained with (before: rebuilt
    # from config without its vocabulary, so the `text` signature failed).
    preprocessor = kerastl.create_text_preprocessor("all-minilm-l6-v2", sequence_length=8)
    vocabulary = preprocessor.tokenizer.vocabulary_size()
    kerastl.set_precision("mixed_float16")
    try:
        backbone = kerastl.create_backbone(
            "bert_base_en_uncased", weights=None, **{**TINY_TEXT, "vocabulary_size": vocabulary}
        )
        text = kerastl.TransferModel(backbone, num_classes=2, preprocessor=preprocessor)
    finally:
        kerastl.set_precision("float32")
    strings = tf.constant(["a moving, funny film"])
    copy = kx.float32_copy(text)
    np.testing.assert_array_equal(
        copy.preprocessor(strings)["token_ids"], text.preprocessor(strings)["token_ids"]
    )
    # With LoRA adapters, the merged model an export serves stays float32 (before:
    # rebuilt under the global mixed policy, the layers a KerasHub backbone builds
    # from its arguments came back float16, and the parity gate refused the export).
    kerastl.lora(text, rank=2, groups="layer_1")
    copy = kx.float32_copy(text)
    kerastl.set_precision("mixed_float16")
    try:
        merged = kerastl.merge_lora(copy)
    finally:
        kerastl.set_precision("float32")
    assert {layer.compute_dtype for layer in merged._flatten_layers()} == {"float32", "int32"}
    tokens = text.preprocessor(tf.constant(["a moving, funny film", "dull"]))
    np.testing.assert_allclose(merged(tokens), copy(tokens), atol=1e-5)


_KILLED_EXPORT = """
import sys, time
import kerastl, kerastl.export.bundle as bundle
def stall(*args):
    print("POPULATED", flush=True)  # the SavedModel is in the temporary directory
    time.sleep(600)
bundle._check_ops = stall
model = kerastl.TransferModel(
    "mobilenetv3small", num_classes=2, weights=None, input_shape=(32, 32, 3)
)
kerastl.export.serving_bundle(model, sys.argv[1], "tiny", signatures="image_tensor")
"""


@pytest.mark.slow
def test_an_export_killed_mid_write_publishes_nothing_and_the_next_succeeds(tiny_model, tmp_path):
    script = tmp_path / "export.py"
    script.write_text(textwrap.dedent(_KILLED_EXPORT))
    base = tmp_path / "serving"
    process = subprocess.Popen(
        [sys.executable, str(script), str(base)], stdout=subprocess.PIPE, text=True
    )
    try:
        lines = iter(process.stdout.readline, "")
        assert next(line for line in lines if not line.startswith("kerastl: ")) == "POPULATED\n"
        (temporary,) = os.listdir(base / "tiny")
        assert temporary.startswith(".") and os.listdir(base / "tiny" / temporary)
    finally:
        process.kill()
        process.wait()
    assert [entry for entry in os.listdir(base / "tiny") if not entry.startswith(".")] == []
    assert not (base / "models.config").exists()
    version = kx.serving_bundle(tiny_model, base, "tiny", signatures="image_tensor")
    assert version == str(base / "tiny" / "1")
    assert os.listdir(base / "tiny") == ["1"]  # the killed export's leftovers are gone


def test_versions_count_up_from_the_highest_integer_directory(tmp_path):
    assert kx.next_version(tmp_path) == 1
    for entry in ("1", "7", ".tmp-8-123-abc", "notes"):
        (tmp_path / entry).mkdir()
    assert kx.next_version(tmp_path) == 8


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, p: kx.saved_model(m, p, signatures=("image_bytes", "text")), "signatures"),
        (lambda m, p: kx.onnx(m, p / "m.onnx", opset=19), "opset=19"),
        (lambda m, p: kx.onnx(m, p / "m.pb"), "must end in '.onnx'"),
        (lambda m, p: kx.serving_bundle(m, p, "bad name"), "name='bad name'"),
        (lambda m, p: kx.serving_bundle(m, p, "ok", on_unsupported_ops="x"), "on_unsupported"),
        (
            lambda m, p: kx.saved_model(m, p, samples=np.zeros((2, 8, 8, 3))),
            r"shape=\(2, 8, 8, 3\)",
        ),
        (lambda m, p: kx.saved_model(m, p, image_dtype="int8"), "image_dtype='int8'"),
        (
            lambda m, p: kx.onnx(m, p / "m.onnx", signature="image_tensor_tta"),
            "export it in a SavedModel",
        ),
    ],
)
def test_bad_arguments_name_the_value(tiny_model, tmp_path, call, message):
    with pytest.raises(ValueError, match=message):
        call(tiny_model, tmp_path)


@pytest.mark.slow
def test_uint8_images_and_an_existing_export_is_not_replaced_unless_asked(tiny_model, tmp_path):
    model = tiny_model
    path = kx.saved_model(model, tmp_path / "sm", signatures="image_tensor", image_dtype="uint8")
    signature = tf.saved_model.load(path).signatures["image_tensor"]
    pixels = np.round(_images(2, size=32)).astype(np.uint8)
    logits = signature(images=pixels)["logits"]
    np.testing.assert_allclose(
        logits, model.predict(pixels.astype("float32"), verbose=0), atol=1e-5
    )
    with pytest.raises(FileExistsError, match="overwrite=True"):
        kx.saved_model(model, path, signatures="image_tensor")


def test_publishing_over_an_existing_directory_replaces_it_whole(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "stale.txt").write_text("old")
    new = _atomic.temporary_sibling(str(tmp_path / "old"))
    os.mkdir(new)
    (tmp_path / new / "saved_model.pb").write_text("new")
    with pytest.raises(FileExistsError):
        _atomic.publish(new, str(tmp_path / "old"))
    _atomic.publish(new, str(tmp_path / "old"), overwrite=True)
    assert os.listdir(tmp_path) == ["old"]
    assert os.listdir(tmp_path / "old") == ["saved_model.pb"]


# === Text ===


@pytest.fixture(scope="module")
def minilm():
    """MiniLM's architecture at two small layers, with MiniLM's own WordPiece
    tokenizer (its default 128 tokens) attached as `TransferModel` attaches it:
    the text signatures follow the tokenizer, not the trained weights (with
    the pretrained model the two tests took 40 s instead of 23 s)."""
    keras.utils.set_random_seed(0)
    backbone = kerastl.create_backbone(
        "all-minilm-l6-v2", weights=None, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32,
    )  # fmt: skip
    preprocessor = kerastl.create_text_preprocessor("all-minilm-l6-v2", sequence_length=128)
    return kerastl.TransferModel(
        backbone, num_classes=2, pooling="mean", class_names=["rotten", "fresh"],
        preprocessor=preprocessor,
    )  # fmt: skip


@pytest.fixture(scope="module")
def text_samples():
    texts = ["a gripping, beautifully shot film", "dull and far too long", "fine"]
    preprocessor = kerastl.create_text_preprocessor("all-minilm-l6-v2", sequence_length=16)
    tokens = preprocessor(tf.constant(texts))
    arrays = {name: np.asarray(tokens[name], np.int32) for name in tokens}
    return arrays | {"text": texts}, preprocessor


@pytest.mark.slow
def test_a_tokenizer_core_ops_cannot_express_keeps_tf_text_and_the_op_scan_refuses_it(
    minilm, text_samples, tmp_path
):
    """Special tokens written in the strings are beyond the core-op WordPiece:
    the `text` signature runs TF-Text, and stock TF Serving is refused it."""
    samples, preprocessor = text_samples
    special = keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(
            vocabulary=preprocessor.tokenizer.vocabulary, lowercase=True,
            special_tokens_in_strings=True,
        ),
        sequence_length=16,
    )  # fmt: skip
    with pytest.warns(UserWarning, match="special tokens.*stock TF Serving"):
        path = kx.saved_model(
            minilm, tmp_path / "sm", ("text", "token_ids"), samples=samples,
            preprocessor=special,
        )  # fmt: skip
    loaded = tf.saved_model.load(path)
    tokens = {name: samples[name] for name in minilm.input}
    expected = minilm.predict(tokens, verbose=0)
    from_tokens = run_signature(loaded.signatures["token_ids"], tokens)
    np.testing.assert_allclose(from_tokens["logits"], expected, atol=1e-5)
    from_text = run_signature(
        loaded.signatures["text"], {"text": np.array(samples["text"], object)}
    )
    np.testing.assert_allclose(from_text["logits"], expected, atol=1e-5)
    scan = kx.scan_serving_ops(path)
    assert "FastWordpieceTokenizeWithOffsets" in scan["text"] and "token_ids" not in scan

    texts = detokenized(preprocessor, samples)  # warmup text from token samples
    np.testing.assert_array_equal(
        preprocessor(tf.constant(texts))["token_ids"], samples["token_ids"]
    )
    with pytest.raises(kx.UnsupportedServingOpsError, match="FastWordpiece"):
        bundle_module._check_ops(loaded, "serving/reviews/1", on_unsupported_ops="raise")
    with pytest.warns(UserWarning, match="FastWordpiece"):
        bundle_module._check_ops(loaded, "serving/reviews/1", on_unsupported_ops="warn")


@pytest.mark.slow
def test_a_wordpiece_text_signature_runs_in_core_ops_and_publishes_to_stock_tf_serving(
    minilm, tmp_path
):
    """The `text` signature of a WordPiece model, from the model's own tokenizer
    (no `preprocessor` passed) and raw strings as samples: core ops only (the
    bundle's op scan passes without `on_unsupported_ops`), each batch padded to
    its own longest text, the same probabilities as Keras on the same strings."""
    texts = ["a gripping, beautifully shot film", "dull and far too long", "fine", "Caf\u00e9!", ""]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        version = kx.serving_bundle(minilm, tmp_path, "reviews", signatures="text", samples=texts)
    with open(os.path.join(version, "assets.extra", "parity.json")) as file:
        report = json.load(file)
    assert report["passed"] and [r["target"] for r in report["results"]] == [
        version,
        f"{version}#text",
    ]
    loaded = tf.saved_model.load(version)
    assert set(loaded.signatures) == {"serving_default", "text", "token_ids"}
    assert list(loaded.signatures["serving_default"].structured_input_signature[1]) == ["text"]
    assert kx.scan_serving_ops(version) == {}
    signature = loaded.signatures["text"]
    short = signature(text=tf.constant(["fine", "ok"]))
    long = signature(text=tf.constant(["fine", " ".join(["long"] * 300)]))
    expected = minilm.predict(["fine", "ok"], verbose=0)
    np.testing.assert_allclose(short["logits"], expected, atol=1e-5)
    np.testing.assert_allclose(long["logits"][:1], expected[:1], atol=1e-5)  # padding is masked
    requests = read_warmup(os.path.join(version, "assets.extra", "tf_serving_warmup_requests"))
    texts_sent = [request_arrays(r)["text"] for r in requests if "text" in request_arrays(r)]
    assert len(texts_sent) == len(texts)
    for sent in texts_sent:
        served = run_signature(signature, {"text": sent})
        expected = minilm.predict([sent[0].decode()], verbose=0)
        np.testing.assert_allclose(served["logits"], expected, atol=1e-5)


@pytest.mark.slow
def test_text_bundle_warmup_replays_and_onnx_matches(text_samples, tmp_path):
    samples, _ = text_samples
    backbone = kerastl.create_backbone(
        "all-minilm-l6-v2", weights=None, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32,
    )  # fmt: skip
    model = kerastl.TransferModel(backbone, num_classes=2, pooling="mean")
    tokens = {name: samples[name] for name in model.input}
    version = kx.serving_bundle(model, tmp_path, "reviews", samples=tokens)
    loaded = tf.saved_model.load(version)
    requests = read_warmup(os.path.join(version, "assets.extra", "tf_serving_warmup_requests"))
    assert len(requests) == 3
    for row, request in enumerate(requests):
        out = run_signature(loaded.signatures["token_ids"], request_arrays(request))
        expected = model.predict({k: v[row : row + 1] for k, v in tokens.items()}, verbose=0)
        np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
    body = rest_body("token_ids", signature_inputs("token_ids", tokens))
    assert set(body["instances"][0]) == {"token_ids", "segment_ids", "padding_mask"}

    path = kx.onnx(model, tmp_path / "text.onnx", samples=tokens)
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", "sequence"]
    logits = session.run(["logits"], tokens)[0]
    np.testing.assert_allclose(logits, model.predict(tokens, verbose=0), atol=1e-4)
    token_ids = loaded.signatures["token_ids"]
    for length in (5, 40):  # any length: not the samples' 16
        other = {
            "token_ids": np.random.default_rng(length).integers(1, 1000, (2, length), np.int32),
            "padding_mask": np.ones((2, length), np.int32),
            "segment_ids": np.zeros((2, length), np.int32),
        }
        expected = model.predict(other, verbose=0)
        np.testing.assert_allclose(session.run(["logits"], other)[0], expected, atol=1e-4)
        served = run_signature(token_ids, other)["logits"]
        np.testing.assert_allclose(served, expected, atol=1e-5)


def test_models_config_keeps_other_models_and_updates_an_entry(tmp_path):
    kx.write_models_config(tmp_path, "elpv")
    kx.write_models_config(tmp_path, "reviews", num_versions=1)
    kx.write_models_config(tmp_path, "elpv", num_versions=3)
    config = text_format.Parse(
        (tmp_path / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    entries = {
        e.name: e.model_version_policy.latest.num_versions for e in config.model_config_list.config
    }
    assert entries == {"elpv": 3, "reviews": 1}
    assert os.listdir(tmp_path) == ["models.config"]


def test_samples_from_length_bucketed_text_batches_are_padded_to_one_length():
    from kerastl.export.samples import model_samples

    model = types.SimpleNamespace(input={"token_ids": None, "padding_mask": None})

    batches = tf.data.Dataset.from_generator(
        lambda: iter(
            [
                (
                    {
                        "token_ids": np.ones((2, 3), "int32"),
                        "padding_mask": np.ones((2, 3), "int32"),
                    },
                    [0, 1],
                ),
                (
                    {
                        "token_ids": np.ones((1, 5), "int32"),
                        "padding_mask": np.ones((1, 5), "int32"),
                    },
                    [1],
                ),
            ]
        ),
        output_signature=(
            {name: tf.TensorSpec((None, None), tf.int32) for name in model.input},
            tf.TensorSpec((None,), tf.int64),
        ),
    )
    samples = model_samples(model, batches)
    assert samples["token_ids"].shape == (3, 5)
    np.testing.assert_array_equal(samples["padding_mask"].sum(axis=1), [3, 3, 5])


@pytest.mark.slow
def test_a_bundle_averages_the_test_time_views_it_is_given(tiny_model, tmp_path):
    """`serving_bundle` passes its `tta` to the SavedModel (it had no such keyword,
    so a bundle's `image_tensor_tta` always averaged the 8 dihedral views)."""
    images = np.round(_images(4, seed=5, size=32))
    version = kx.serving_bundle(
        tiny_model, tmp_path, "tta", signatures="image_tensor_tta", tta="flip", samples=images
    )
    served = tf.saved_model.load(version).signatures["image_tensor_tta"]
    flips = [images, images[:, :, ::-1]]
    keras_mean = np.mean(
        [keras.ops.softmax(tiny_model(np.ascontiguousarray(v), training=False)) for v in flips],
        axis=0,
    )
    np.testing.assert_allclose(served(images=images)["probabilities"], keras_mean, atol=1e-5)


def test_export_options_name_the_bad_value():
    from kerastl.export.options import ExportOptions

    with pytest.raises(ValueError, match=r"image_dtype.*Received: image_dtype='int8'"):
        ExportOptions(image_dtype="int8")
    with pytest.raises(ValueError, match=r"top_k.*Received: top_k=0"):
        ExportOptions(top_k=0)
    with pytest.raises(ValueError, match=r"tolerance.*Received: tolerance=-1"):
        ExportOptions(tolerance=-1)


def _op_count(saved_model: str, op: str) -> int:
    """How many nodes of type `op` a SavedModel's graph and function library hold."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model, "saved_model.pb"), "rb") as file:
        proto.ParseFromString(file.read())
    graph = proto.meta_graphs[0].graph_def
    nodes = [*graph.node, *(node for f in graph.library.function for node in f.node_def)]
    return sum(node.op == op for node in nodes)


@pytest.mark.slow
def test_the_tta_signature_matches_the_mean_of_keras_over_the_views(tiny_model, tmp_path):
    tta = "dihedral"
    model = tiny_model
    path = kx.saved_model(model, tmp_path / "sm", signatures="image_tensor_tta", tta=tta)
    with open(os.path.join(path, "assets.extra", "parity.json")) as file:
        checked = [r["target"] for r in json.load(file)["results"]]
    assert checked == [path, f"{path}#image_tensor_tta"]
    loaded = tf.saved_model.load(path)
    images = np.round(_images(6, seed=4, size=32))
    probabilities = loaded.signatures["image_tensor_tta"](images=images)["probabilities"]
    views = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    views += [v[:, :, ::-1] for v in views]
    keras_mean = np.mean(
        [keras.ops.softmax(model(np.ascontiguousarray(v), training=False)) for v in views], axis=0
    )
    np.testing.assert_allclose(probabilities, keras_mean, atol=1e-5)
    requested = signature_inputs("image_tensor_tta", images)["images"]  # a bundle's requests
    np.testing.assert_array_equal(requested, images)
    plain = loaded.signatures["image_tensor"](images=images)["probabilities"]
    assert np.abs(np.asarray(plain) - keras_mean).max() > 1e-4  # the views change the answer
    # Both signatures and all 8 views call one traced forward pass: the graph
    # holds each convolution at most twice (TF keeps a function and its
    # inference copy), not once per view and signature (9 calls: 18 times).
    convolutions = [x for x in model._flatten_layers() if type(x) is keras.layers.Conv2D]
    assert _op_count(path, "Conv2D") <= 2 * len(convolutions)
    with pytest.raises(ValueError, match=r"needs test-time views.*Received: tta='none'"):
        kx.saved_model(model, tmp_path / "none", signatures="image_tensor_tta", tta="none")
