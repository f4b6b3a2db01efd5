"""Image preprocessing that lives inside the model, so exports take raw pixels."""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """`y = x[..., ::-1] if reverse_channels else x`, then `y * scale + offset`.

    Inputs are raw pixels in [0, 255], RGB. Keras Applications' modes:
    `caffe` (BGR, ImageNet mean subtracted), `tf` ([-1, 1]), `torch`
    (ImageNet mean/std); `included` means the backbone preprocesses itself.

    Args:
        scale: per-channel (or one) multiplier.
        offset: per-channel (or one) offset added after scaling.
        reverse_channels: flip RGB to BGR first.
    """

    scale: tuple[float, ...] = (1.0,)
    offset: tuple[float, ...] = (0.0,)
    reverse_channels: bool = False

    @classmethod
    def from_mode(cls, mode: str) -> Preprocessing:
        """Returns the preprocessing for a Keras Applications mode name.

        Args:
            mode: `caffe`, `tf`, `torch` or `included`.

        Returns:
            The matching `Preprocessing`.

        Example:
            >>> Preprocessing.from_mode("tf").offset
            (-1.0,)
        """
        if mode == "caffe":
            return cls(offset=tuple(-m for m in _CAFFE_MEAN_BGR), reverse_channels=True)
        if mode == "tf":
            return cls(scale=(1 / 127.5,), offset=(-1.0,))
        if mode == "torch":
            return cls(
                scale=tuple(1 / (255 * s) for s in _IMAGENET_STD),
                offset=tuple(-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD, strict=True)),
            )
        if mode == "included":
            return cls()
        raise ValueError(
            "Preprocessing mode must be one of 'caffe', 'tf', 'torch', 'included'. "
            f"Received: mode={mode!r}."
        )

    def layer(self, name: str = "preprocessing") -> ImagePreprocessing:
        """Returns the Keras layer that applies this preprocessing."""
        return ImagePreprocessing(
            scale=list(self.scale),
            offset=list(self.offset),
            reverse_channels=self.reverse_channels,
            name=name,
        )


@keras.saving.register_keras_serializable(package="kerastl")
class ImagePreprocessing(keras.layers.Layer):
    """Casts raw pixels to float and applies `Preprocessing` inside the model.

    Args:
        scale: list of one or three multipliers.
        offset: list of one or three offsets.
        reverse_channels: flip the last axis (RGB to BGR) first.

    Example:
        >>> layer = ImagePreprocessing(scale=[1 / 127.5], offset=[-1.0])
        >>> layer(np.full((1, 2, 2, 3), 255.0))  # all ones
    """

    def __init__(self, scale=(1.0,), offset=(0.0,), reverse_channels=False, **kwargs):
        super().__init__(**kwargs)
        # === Config ===
        self.scale = [float(s) for s in scale]
        self.offset = [float(o) for o in offset]
        self.reverse_channels = bool(reverse_channels)
        for field, values in (("scale", self.scale), ("offset", self.offset)):
            if len(values) not in (1, 3):
                raise ValueError(f"`{field}` must hold 1 or 3 values. Received: {field}={values}.")

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.reverse_channels:
            x = keras.ops.flip(x, axis=-1)
        scale = keras.ops.convert_to_tensor(self.scale, dtype=self.compute_dtype)
        offset = keras.ops.convert_to_tensor(self.offset, dtype=self.compute_dtype)
        return x * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "scale": self.scale,
                "offset": self.offset,
                "reverse_channels": self.reverse_channels,
            }
        )
        return config


def load_image(
    path: str | os.PathLike,
    size: tuple[int, int] = (224, 224),
    crop_fraction: float = 0.875,
    *,
    antialias: bool = False,
) -> np.ndarray:
    """Loads an image as raw float32 RGB pixels, center-cropped and resized.

    By default the ImageNet evaluation transform of the TF reference models:
    `tf.image.central_crop(crop_fraction)`, then bilinear resize without
    antialiasing. (PIL's antialiased resize shifts top-5 rankings.) With
    `antialias=True`, the resize of kerastl's training pipeline and exported
    `image_bytes` signature instead (`kerastl.data.pipeline.resized_rgb`):
    what a model trained by kerastl saw.

    Args:
        path: a JPEG, PNG, GIF or BMP file.
        size: `(height, width)` after resizing.
        crop_fraction: the central fraction kept, in (0, 1].
        antialias: resize as kerastl's training pipeline does.

    Returns:
        A `[height, width, 3]` float32 array in [0, 255].

    Example:
        >>> load_image("china.jpg").shape
        (224, 224, 3)
        >>> load_image("cell.png", (224, 224), 1.0, antialias=True).shape  # as training saw it
        (224, 224, 3)
    """
    import tensorflow as tf

    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(
            f"`crop_fraction` must be in (0, 1]. Received: crop_fraction={crop_fraction}."
        )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Image not found. Received: path={path!r}.")
    from kerastl.data.images import misread_bmp_reason

    with open(path, "rb") as file:
        data = file.read()
    if reason := misread_bmp_reason(data):
        raise ValueError(f"Cannot decode image {path!r} right: {reason}.")
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(f"Cannot decode image {path!r}: {error.message}") from error
    image = tf.image.central_crop(image, crop_fraction)
    if antialias:
        from kerastl.data.pipeline import resized_rgb

        return resized_rgb(image, size).numpy()
    image = tf.image.resize(image, size, method="bilinear", antialias=False)
    return image.numpy().astype("float32")
