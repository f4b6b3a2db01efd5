"""TF Serving requests for exported signatures: REST bodies, gRPC `PredictRequest`s,
and the warmup file (`assets.extra/tf_serving_warmup_requests`).

Shared by `serving_bundle` (warmup and example requests) and the clients in
the top-level `export/` folder.
"""

from __future__ import annotations

import base64
import os

import numpy as np

from kerastl.export.samples import whole_pixels
from kerastl.export.signatures import (
    EXAMPLE_IMAGE_KEY,
    IMAGE_BYTES,
    IMAGE_TENSOR,
    IMAGE_TENSOR_TTA,
    TEXT,
    TF_EXAMPLE,
    TOKEN_IDS,
)

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving reads at most this many


def signature_inputs(signature: str, samples, *, image_dtype: str = "float32") -> dict:
    """The named input arrays of `signature` for normalized samples.

    Args:
        signature: an exported signature name.
        samples: images `[n, H, W, 3]` in [0, 255], or a dict of token arrays
            with a `"text"` list for the `text` signature.
        image_dtype: the dtype of `image_tensor`'s input.

    Returns:
        Input name → numpy array (`object` arrays of bytes for string inputs).

    Example:
        >>> signature_inputs("image_bytes", images)["image_bytes"][0][:2]
        b'\\xff\\xd8'
    """
    if signature in (IMAGE_TENSOR, IMAGE_TENSOR_TTA):
        images = np.asarray(samples, np.float32)
        if image_dtype == "uint8":
            return {"images": whole_pixels(images)}
        return {"images": images}
    if signature == IMAGE_BYTES:
        return {"image_bytes": _object_array(encode_images(samples))}
    if signature == TF_EXAMPLE:
        return {"examples": _object_array(tf_examples(encode_images(samples)))}
    if signature == TOKEN_IDS:
        return {
            name: np.asarray(value, np.int32) for name, value in samples.items() if name != TEXT
        }
    if signature == TEXT:
        if TEXT not in samples:
            raise ValueError("The `text` signature needs raw strings: samples['text'].")
        return {"text": _object_array([str(text) for text in samples[TEXT]])}
    raise ValueError(f"Unknown signature {signature!r}.")


def encode_images(images, image_format: str = "jpeg") -> list[bytes]:
    """Encodes `[n, H, W, 3]` pixels in [0, 255] as JPEG (quality 95) or PNG."""
    import tensorflow as tf

    pixels = whole_pixels(images)
    if image_format == "png":
        return [tf.io.encode_png(image).numpy() for image in pixels]
    if image_format == "jpeg":
        return [tf.io.encode_jpeg(image, quality=95).numpy() for image in pixels]
    raise ValueError(f"`image_format` must be 'jpeg' or 'png'. Received: {image_format!r}.")


def tf_examples(encoded: list[bytes]) -> list[bytes]:
    """Serialized `tf.train.Example`s holding each encoded image under `image/encoded`."""
    import tensorflow as tf

    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    EXAMPLE_IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
                }
            )
        ).SerializeToString()
        for data in encoded
    ]


def rest_body(signature: str, inputs: dict) -> dict:
    """A TF Serving REST `:predict` body in the row (`instances`) format.

    Bytes values are sent as `{"b64": ...}`, which TF Serving decodes for
    `tf.string` inputs.

    Args:
        signature: the signature name.
        inputs: input name → array with the batch first.

    Returns:
        `{"signature_name": ..., "instances": [{name: value, ...}, ...]}`.

    Example:
        >>> body = rest_body("image_bytes", signature_inputs("image_bytes", images[:1]))
        >>> body["instances"][0]["image_bytes"].keys()
        dict_keys(['b64'])
    """
    count = len(next(iter(inputs.values())))
    instances = [
        {name: _json_value(np.asarray(value)[row]) for name, value in inputs.items()}
        for row in range(count)
    ]
    return {"signature_name": signature, "instances": instances}


def rest_response(outputs: dict) -> dict:
    """The body TF Serving answers a row-format request with, for given outputs.

    String outputs come back as text (TF Serving base64-encodes only outputs
    whose name ends in `_bytes`).
    """
    count = len(next(iter(outputs.values())))
    return {
        "predictions": [
            {
                name: _json_value(np.asarray(value)[row], text=not name.endswith("_bytes"))
                for name, value in outputs.items()
            }
            for row in range(count)
        ]
    }


def predict_request(model_name: str, signature: str, inputs: dict, version: int | None = None):
    """A gRPC `tensorflow.serving.PredictRequest` for `signature`.

    Args:
        model_name: the served model's name.
        signature: the signature name.
        inputs: input name → array with the batch first.
        version: a specific version, or None for the latest.

    Returns:
        A `predict_pb2.PredictRequest`.

    Example:
        >>> request = predict_request("elpv", "image_tensor", {"images": images[:1]})
        >>> stub.Predict(request, 10.0)
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        array = np.asarray(value)
        dtype = tf.string if array.dtype == object else None
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
    return request


def write_warmup(path: str | os.PathLike, requests) -> int:
    """Writes `PredictRequest`s as the TFRecord of `PredictionLog`s TF Serving replays.

    Args:
        path: the file (`<version>/assets.extra/tf_serving_warmup_requests`).
        requests: `PredictRequest`s, at most 1000.

    Returns:
        The number of records written.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    requests = list(requests)
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(
            f"TF Serving replays at most {MAX_WARMUP_RECORDS} warmup records. "
            f"Received: {len(requests)}."
        )
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return len(requests)


def read_warmup(path: str | os.PathLike) -> list:
    """Reads the `PredictRequest`s back from a warmup file.

    Example:
        >>> for request in read_warmup("1/assets.extra/tf_serving_warmup_requests"):
        ...     print(request.model_spec.signature_name)
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    for record in tf.data.TFRecordDataset(os.fspath(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        requests.append(log.predict_log.request)
    return requests


def request_arrays(request) -> dict[str, np.ndarray]:
    """A `PredictRequest`'s inputs as numpy arrays."""
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}


def _object_array(values: list[bytes]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _json_value(value, text: bool = False):
    if isinstance(value, bytes):
        if text:
            return value.decode("utf-8", errors="replace")
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [_json_value(item, text) for item in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def run_signature(function, inputs: dict) -> dict[str, np.ndarray]:
    """Calls a loaded SavedModel signature on named numpy inputs.

    Example:
        >>> loaded = tf.saved_model.load("out/elpv/1")
        >>> run_signature(loaded.signatures["image_bytes"], inputs)["class_name"]
    """
    import tensorflow as tf

    specs = function.structured_input_signature[1]
    unknown = sorted(set(inputs) - set(specs))
    if unknown:
        raise ValueError(f"Unknown inputs {unknown}; the signature takes {sorted(specs)}.")
    feed = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype == object:
            feed[name] = tf.constant([v.encode() if isinstance(v, str) else v for v in array])
        else:
            feed[name] = tf.constant(array, dtype=specs[name].dtype)
    return {name: value.numpy() for name, value in function(**feed).items()}
