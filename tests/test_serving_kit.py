"""The deployment kit in `export/` against stand-ins for TF Serving's REST and gRPC APIs.

The TF Serving binary cannot be installed here; the stand-ins answer
`:predict` (row format, `{"b64": ...}` strings) and `PredictionService/Predict`
from the bundle's SavedModel, as the model server does.
"""

import base64
import importlib.util
import json
import os
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import tensorflow as tf

import kerastl
import kerastl.export as kx
from kerastl.export.requests import (
    encode_images,
    predict_request,
    request_arrays,
    rest_response,
    run_signature,
)

KIT = os.path.join(os.path.dirname(__file__), os.pardir, "export")


def _kit(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(KIT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = kerastl.TransferModel(
        "efficientnet-lite0", num_classes=2, weights=None, input_shape=(32, 32, 3),
        class_names=["functional", "defective"],
    )  # fmt: skip
    base = tmp_path_factory.mktemp("serving")
    version = kx.serving_bundle(model, base, "cells", samples=_pixels(3))
    signatures = tf.saved_model.load(version).signatures
    rest = HTTPServer(("127.0.0.1", 0), _rest_handler("cells", signatures))
    threading.Thread(target=rest.serve_forever, daemon=True).start()
    grpc_server, port = _grpc_server("cells", signatures)
    yield model, version, f"http://127.0.0.1:{rest.server_port}", f"127.0.0.1:{port}"
    rest.shutdown()
    grpc_server.stop(None)


def _pixels(count, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, 32, 32, 3)).astype("float32")


def _rest_handler(name, signatures):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != f"/v1/models/{name}:predict":
                self.send_error(404, f"unknown model path {self.path}")
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            rows = body["instances"]
            inputs = {
                key: np.array([_from_json(row[key]) for row in rows], dtype=object)
                if isinstance(rows[0][key], dict)
                else np.array([row[key] for row in rows])
                for key in rows[0]
            }
            outputs = run_signature(
                signatures[body.get("signature_name", "serving_default")], inputs
            )
            data = json.dumps(rest_response(outputs)).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


def _from_json(value):
    return base64.b64decode(value["b64"])


def _grpc_server(name, signatures):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            assert request.model_spec.name == name
            outputs = run_signature(
                signatures[request.model_spec.signature_name], request_arrays(request)
            )
            response = predict_pb2.PredictResponse()
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.mark.slow
def test_smoke_script_replays_the_bundle_requests_and_catches_a_wrong_model(served, capsys):
    _, version, url, _ = served
    smoke = _kit("smoke")
    assert smoke.main([version, "--url", url, "--model", "cells"]) == 0
    printed = capsys.readouterr().out
    assert "ok     image_bytes" in printed and "ok     image_tensor" in printed
    response = os.path.join(version, "assets.extra", "requests", "image_tensor.response.json")
    with open(response) as file:
        recorded = json.load(file)
    recorded["predictions"][0]["probabilities"][0] += 0.01
    with open(response, "w") as file:
        json.dump(recorded, file)
    assert smoke.main([version, "--url", url, "--model", "cells"]) == 1
    assert "FAILED image_tensor: max diff 0.01" in capsys.readouterr().out
    assert smoke.main([version, "--url", url, "--model", "unknown"]) == 1


def test_rest_and_grpc_clients_get_the_keras_answer(served, tmp_path, capsys):
    model, _, url, target = served
    pixels = _pixels(2, seed=1)
    paths = []
    for index, data in enumerate(encode_images(pixels, "png")):
        paths.append(str(tmp_path / f"cell{index}.png"))
        with open(paths[-1], "wb") as file:
            file.write(data)
    expected = tf.nn.softmax(model.predict(np.round(pixels), verbose=0)).numpy()

    rest = _kit("rest_client")
    answer = rest.predict(url, "cells", rest.image_bytes_body(paths))["predictions"]
    np.testing.assert_allclose([row["probabilities"] for row in answer], expected, atol=1e-5)
    assert rest.main([*paths, "--url", url, "--model", "cells"]) == 0
    assert "cell0.png: " in capsys.readouterr().out

    grpc_client = _kit("grpc_client")
    encoded = np.array(encode_images(pixels, "png"), dtype=object)
    request = predict_request("cells", "image_bytes", {"image_bytes": encoded})
    outputs = grpc_client.predict(target, request)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    assert outputs["class_name"][0][0].decode() in {"functional", "defective"}
    assert grpc_client.main([*paths, "--target", target, "--model", "cells"]) == 0


def test_clients_without_a_server_name_the_address_and_how_to_start_one(tmp_path, capsys):
    from processes import free_ports

    port = free_ports(1)[0]  # nothing listens there
    image = tmp_path / "cell.png"
    image.write_bytes(encode_images(_pixels(1), "png")[0])
    rest = _kit("rest_client")
    assert rest.main([str(image), "--url", f"http://127.0.0.1:{port}", "--model", "cells"]) == 2
    error = capsys.readouterr().err
    assert f"No TF Serving answered at http://127.0.0.1:{port}" in error
    assert "export/README.md" in error and "Traceback" not in error
    grpc_client = _kit("grpc_client")
    target = f"127.0.0.1:{port}"
    assert grpc_client.main([str(image), "--target", target, "--model", "cells"]) == 2
    assert f"No TF Serving answered at {target}" in capsys.readouterr().err


@pytest.mark.slow
def test_the_rest_client_sends_raw_text_to_a_wordpiece_bundle(tmp_path, capsys):
    """`rest_client.py --text`: plain JSON strings to the core-op `text`
    signature, answered as Keras answers the same strings."""
    preprocessor = kerastl.create_text_preprocessor("all-minilm-l6-v2", sequence_length=16)
    backbone = kerastl.create_backbone(
        "bert_base_en_uncased", weights=None, num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, vocabulary_size=preprocessor.tokenizer.vocabulary_size(),
        max_sequence_length=16,
    )  # fmt: skip
    model = kerastl.TransferModel(
        backbone, num_classes=2, class_names=["rotten", "fresh"], preprocessor=preprocessor
    )
    texts = ["a gripping film", "far too long, and dull"]
    version = kx.serving_bundle(model, tmp_path, "reviews", signatures="text", samples=texts)
    server = HTTPServer(
        ("127.0.0.1", 0), _rest_handler("reviews", tf.saved_model.load(version).signatures)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        rest = _kit("rest_client")
        answer = rest.predict(url, "reviews", rest.text_body(texts))["predictions"]
        expected = tf.nn.softmax(model.predict(texts, verbose=0)).numpy()
        np.testing.assert_allclose([row["probabilities"] for row in answer], expected, atol=1e-5)
        assert rest.main(["--text", *texts, "--url", url, "--model", "reviews"]) == 0
    finally:
        server.shutdown()
    printed = capsys.readouterr().out
    assert "a gripping film: " in printed and "far too long, and dull: " in printed
