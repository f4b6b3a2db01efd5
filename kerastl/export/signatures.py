"""Serving functions: what each exported signature takes and returns.

Image signatures:
- `image_tensor`: `images`, `[batch, H, W, 3]` raw RGB pixels in [0, 255]
  (float32, or uint8 with `image_dtype="uint8"`).
- `image_bytes`: `image_bytes`, a `tf.string` batch of encoded JPEG/PNG/BMP/GIF
  images of any size, decoded and resized in the graph exactly as
  kerastl's image sources do (`kerastl.data.pipeline.resized_rgb`: 3 channels,
  bilinear with antialiasing; `antialias=False`: as
  `keras.utils.image_dataset_from_directory` does). TF Serving REST clients send each as
  `{"b64": ...}`. (TensorFlow's BMP decoder reads an 8-bit colour palette's
  indices as grey levels: send such images as PNG.)
- `tf_example`: `examples`, serialized `tf.train.Example`s holding the
  encoded image under `image/encoded`.
- `image_tensor_tta`: `images` as `image_tensor`, classified under each
  test-time view (`tta`: the 8 dihedral symmetries, or the horizontal
  mirror) and the softmax probabilities averaged, as `kerastl.evaluate(...,
  tta=...)` does; its `logits` are the log of the averaged probabilities.

Text signatures:
- `token_ids`: the model's own token inputs (`token_ids`, `padding_mask`,
  and `segment_ids` for BERT), int32 `[batch, length]`.
- `text`: `text`, a `tf.string` batch of UTF-8 strings tokenized in the
  graph: in core TF ops for WordPiece tokenizers (`core_tokenizer`, which
  stock TF Serving runs), padded to the batch's longest text; with TF-Text
  kernels for the others (stock TF Serving cannot load them).

Outputs: `logits`, `probabilities` (softmax; sigmoid for multi-label),
`class_id` (top-1, int64), `top_k_probabilities` and `class_name` (top-k
label strings, from the model's `class_names`). Regression models return
`predictions` only. ONNX exports drop the string output.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from kerastl.data.augment import dihedral_view, tta_views
from kerastl.data.pipeline import resized_rgb
from kerastl.export.keras_export_fixes import grouped_convolutions_without_xla

IMAGE_TENSOR = "image_tensor"
IMAGE_BYTES = "image_bytes"
TF_EXAMPLE = "tf_example"
TOKEN_IDS = "token_ids"
TEXT = "text"
IMAGE_TENSOR_TTA = "image_tensor_tta"
IMAGE_SIGNATURES = (IMAGE_TENSOR, IMAGE_BYTES, TF_EXAMPLE, IMAGE_TENSOR_TTA)
TEXT_SIGNATURES = (TOKEN_IDS, TEXT)
TENSOR_SIGNATURES = (IMAGE_TENSOR, TOKEN_IDS)
STRING_INPUT_SIGNATURES = (IMAGE_BYTES, TF_EXAMPLE, TEXT)
EXAMPLE_IMAGE_KEY = "image/encoded"
_IMAGE_DTYPES = ("float32", "uint8")


def is_text_model(model: keras.Model) -> bool:
    """Whether `model` takes token inputs (a dict) rather than images."""
    return isinstance(model.input, dict)


def tensor_signature(model: keras.Model) -> str:
    """The signature that takes the model's own input tensors."""
    return TOKEN_IDS if is_text_model(model) else IMAGE_TENSOR


def check_signatures(model: keras.Model, signatures) -> tuple[str, ...]:
    """Validates signature names for `model`; the tensor signature is always included.

    Args:
        model: the model to export.
        signatures: names in the order wanted (the first is `serving_default`),
            a single name, or None for the modality's default: `image_bytes`,
            `image_tensor`; for text, `text`, `token_ids` when the model's
            own tokenizer runs in core TF ops (WordPiece: stock TF Serving
            serves raw strings), else `token_ids`.

    Returns:
        The names, the tensor signature appended when missing.
    """
    text = is_text_model(model)
    valid = TEXT_SIGNATURES if text else IMAGE_SIGNATURES
    if signatures is None:
        signatures = _text_default(model) if text else (IMAGE_BYTES, IMAGE_TENSOR)
    elif isinstance(signatures, str):
        signatures = (signatures,)
    names = tuple(signatures)
    unknown = [name for name in names if name not in valid]
    if unknown or not names or len(set(names)) != len(names):
        kind = "text" if text else "image"
        raise ValueError(
            f"`signatures` must be distinct names from {valid} for a {kind} model. "
            f"Received: signatures={signatures!r}."
        )
    tensor = tensor_signature(model)
    return names if tensor in names else (*names, tensor)


def _text_default(model: keras.Model) -> tuple[str, ...]:
    from kerastl.export.core_tokenizer import unsupported_reason

    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is not None and unsupported_reason(preprocessor) is None:
        return (TEXT, TOKEN_IDS)
    return (TOKEN_IDS,)


def image_size(model: keras.Model) -> tuple[int, int]:
    """The model's fixed input height and width."""
    height, width = model.input_shape[1:3]
    if height is None or width is None:
        raise ValueError(
            "Exporting an image model needs a fixed input size. "
            f"Received: input_shape={model.input_shape}."
        )
    return int(height), int(width)


def decode_images(encoded, size: tuple[int, int], antialias: bool = True):
    """A `tf.string` batch of encoded images → float32 `[batch, H, W, 3]`,
    resized by `resized_rgb` (`antialias` as there)."""

    def decode(data):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return resized_rgb(image, size, antialias=antialias)

    return tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec((*size, 3), tf.float32))


def input_specs(model: keras.Model, signature: str, image_dtype: str = "float32") -> dict:
    """The named `tf.TensorSpec`s a signature takes."""
    if signature in (IMAGE_TENSOR, IMAGE_TENSOR_TTA):
        if image_dtype not in _IMAGE_DTYPES:
            raise ValueError(
                f"`image_dtype` must be one of {_IMAGE_DTYPES}. "
                f"Received: image_dtype={image_dtype!r}."
            )
        shape = (None, *image_size(model), 3)
        return {"images": tf.TensorSpec(shape, image_dtype, name="images")}
    if signature == IMAGE_BYTES:
        return {"image_bytes": tf.TensorSpec((None,), tf.string, name="image_bytes")}
    if signature == TF_EXAMPLE:
        return {"examples": tf.TensorSpec((None,), tf.string, name="examples")}
    if signature == TOKEN_IDS:
        return {name: tf.TensorSpec((None, None), tf.int32, name=name) for name in model.input}
    if signature == TEXT:
        return {"text": tf.TensorSpec((None,), tf.string, name="text")}
    raise ValueError(f"Unknown signature {signature!r}.")


def model_forward(model: keras.Model) -> tf.types.experimental.PolymorphicFunction:
    """The model's inference call as one `tf.function`, for every signature of an export.

    Each signature calling it holds a call to one traced function, so a
    SavedModel with several signatures holds the model's graph once (not
    once per signature): smaller, and faster to write, load and serve.

    Args:
        model: a float32 model (see `float32_copy`).

    Returns:
        A `tf.function` from the model's inputs (float32 images, or int32
        token arrays by name) to its first output.

    Example:
        >>> forward = model_forward(model)
        >>> serving_function(model, "image_bytes", forward=forward)
    """
    specs = input_specs(model, tensor_signature(model))  # float32 images, or the token arrays
    spec = specs if is_text_model(model) else specs["images"]
    return tf.function(
        functools.partial(_first_output, model), input_signature=[spec], autograph=False
    )


def _first_output(model: keras.Model, inputs):
    """The model's first output in inference mode (its logits), traced with
    grouped convolutions that need no XLA where they can (`keras_export_fixes`)."""
    with grouped_convolutions_without_xla():
        return keras.tree.flatten(model(inputs, training=False))[0]


def serving_function(
    model: keras.Model,
    signature: str,
    *,
    image_dtype: str = "float32",
    top_k: int = 5,
    preprocessor=None,
    numeric_only: bool = False,
    tta: str = "dihedral",
    forward=None,
    antialias: bool = True,
):
    """A `tf.function` with a fixed input signature for one exported signature.

    Args:
        model: a float32 model (see `float32_copy`).
        signature: one of the names in this module's docstring.
        image_dtype: dtype of `image_tensor`'s `images`.
        top_k: how many labels `class_name` holds (at most the class count).
        preprocessor: what the `text` signature tokenizes with: strings in,
            a dict of token arrays out (`CoreWordPiece`, or a KerasHub text
            preprocessor).
        numeric_only: leave out the string output (for ONNX).
        tta: the test-time views of `image_tensor_tta` (`dihedral` or `flip`).
        forward: the model call to use (`model_forward(model)`, shared by the
            signatures of one export); None calls the model directly.
        antialias: how `image_bytes` and `tf_example` resize a decoded image
            (`resized_rgb`): True as kerastl's image sources do, False as
            `keras.utils.image_dataset_from_directory` does.

    Returns:
        A `tf.function` taking the inputs of `input_specs` as keyword
        arguments and returning a dict of named outputs.
    """
    specs = input_specs(model, signature, image_dtype)
    names = list(specs)
    outputs = _output_fn(model, top_k, numeric_only)

    if signature in (IMAGE_TENSOR, IMAGE_TENSOR_TTA):

        def model_inputs(images):
            return tf.cast(images, tf.float32)
    elif signature == IMAGE_BYTES:

        def model_inputs(image_bytes):
            return decode_images(image_bytes, image_size(model), antialias)
    elif signature == TF_EXAMPLE:

        def model_inputs(examples):
            parsed = tf.io.parse_example(
                examples, {EXAMPLE_IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
            )
            return decode_images(parsed[EXAMPLE_IMAGE_KEY], image_size(model), antialias)
    elif signature == TOKEN_IDS:

        def model_inputs(**tokens):
            return tokens
    else:
        if preprocessor is None:
            raise ValueError("The `text` signature needs a text `preprocessor`.")

        def model_inputs(text):
            tokens = preprocessor(text)
            return {name: tf.cast(tokens[name], tf.int32) for name in model.input}

    views = _tta_views(model, tta) if signature == IMAGE_TENSOR_TTA else (0,)
    if forward is None:
        forward = functools.partial(_first_output, model)

    def serve(*args):
        inputs = model_inputs(**dict(zip(names, args, strict=True)))
        if len(views) == 1:
            return outputs(forward(inputs))
        # One call on the views stacked along the batch: the graph holds the
        # model once, not once per view (an 8th of the size, load and trace time).
        stacked = tf.concat([dihedral_view(inputs, v) for v in views], axis=0)
        logits = forward(stacked)
        per_view = tf.reshape(logits, [len(views), tf.shape(inputs)[0], -1])
        probabilities = tf.reduce_mean(probabilities_of(model, per_view), axis=0)
        # `outputs` divides by the temperature again: log(p) * T gives back p.
        return outputs(tf.math.log(probabilities) * getattr(model, "temperature", 1.0))

    return tf.function(serve, input_signature=list(specs.values()), autograph=False)


def _tta_views(model: keras.Model, tta: str) -> tuple[int, ...]:
    if getattr(model, "task", "classification") != "classification":
        raise ValueError(
            f"`{IMAGE_TENSOR_TTA}` averages softmax probabilities: single-label "
            f"classification only. Received: a {model.task} model."
        )
    views = tta_views(tta)
    if len(views) < 2:
        raise ValueError(
            f"`{IMAGE_TENSOR_TTA}` needs test-time views: `tta` 'dihedral' or 'flip'. "
            f"Received: tta={tta!r}."
        )
    return views


def probabilities_of(model: keras.Model, logits):
    """Softmax (single-label, at the model's `temperature`) or sigmoid
    (multi-label) of the head's logits."""
    if getattr(model, "task", "classification") == "multilabel":
        return tf.sigmoid(logits)
    return tf.nn.softmax(logits / getattr(model, "temperature", 1.0))


def class_names(model: keras.Model, num_classes: int) -> list[str]:
    """The model's class names, or the class indices as strings."""
    names = getattr(model, "class_names", None)
    return [str(name) for name in names] if names else [str(i) for i in range(num_classes)]


def _output_fn(model: keras.Model, top_k: int, numeric_only: bool):
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive integer. Received: top_k={top_k!r}.")
    regression = getattr(model, "task", "classification") == "regression"
    num_classes = int(model.output_shape[-1])
    k = min(top_k, num_classes)
    labels = class_names(model, num_classes)

    def outputs(logits):
        logits = tf.cast(logits, tf.float32)
        if regression:
            return {"predictions": logits}
        probabilities = probabilities_of(model, logits)
        top = tf.math.top_k(probabilities, k=k)
        result = {
            "logits": logits,
            "probabilities": probabilities,
            "class_id": tf.argmax(probabilities, axis=-1),
            "top_k_probabilities": top.values,
        }
        if not numeric_only:
            result["class_name"] = tf.gather(tf.constant(labels), top.indices)
        return result

    return outputs
