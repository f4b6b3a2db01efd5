"""A gRPC client for a kerastl bundle served by TF Serving (port 8500).

    python export/grpc_client.py --target localhost:8500 --model elpv cell1.png cell2.png

Needs `grpcio` and `tensorflow-serving-api` (both installed with kerastl).
Requests are built by `kerastl.export.requests.predict_request`, the same
code that writes the bundle's warmup file.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def predict(target: str, request, timeout: float = 30.0) -> dict[str, np.ndarray]:
    """Sends a `PredictRequest` and returns the outputs as numpy arrays.

    Args:
        target: the server's gRPC address, e.g. `localhost:8500`.
        request: a `predict_pb2.PredictRequest`
            (`kerastl.export.requests.predict_request`).
        timeout: seconds to wait.

    Returns:
        Output name → array.

    Raises:
        RuntimeError: the server answered with an error, or none answered at `target`.

    Example:
        >>> request = predict_request("elpv", "image_bytes", {"image_bytes": encoded})
        >>> predict("localhost:8500", request)["class_name"]
    """
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                message = f"{target} answered {error.code().name}: {error.details()}"
                raise RuntimeError(message) from None
            raise RuntimeError(
                f"No TF Serving answered at {target} ({error.details()}). Start TF Serving "
                "on the bundle (export/README.md section 2, port 8500), or pass --target."
            ) from None
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def main(argv: list[str] | None = None) -> int:
    from kerastl.export.requests import predict_request

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="JPEG/PNG files")
    parser.add_argument("--target", default="localhost:8500")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", type=int)
    args = parser.parse_args(argv)
    encoded = np.empty(len(args.images), dtype=object)
    for index, path in enumerate(args.images):
        with open(path, "rb") as file:
            encoded[index] = file.read()
    request = predict_request(args.model, "image_bytes", {"image_bytes": encoded}, args.version)
    try:
        outputs = predict(args.target, request)
    except RuntimeError as error:
        print(f"grpc_client: error: {error}", file=sys.stderr)
        return 2
    for path, names, scores in zip(
        args.images, outputs["class_name"], outputs["top_k_probabilities"], strict=True
    ):
        ranked = ", ".join(f"{n.decode()} {p:.3f}" for n, p in zip(names, scores, strict=True))
        print(f"{path}: {ranked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
