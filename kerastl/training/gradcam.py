"""Grad-CAM: where in an image the model looked for the class it scored.

Grad-CAM (Selvaraju et al. 2017) weighs each channel of a convolutional
feature map by the mean gradient of a class's logit with respect to it, sums
the weighted channels, keeps the positive part and resizes it to the image:
a coarse map of the regions that raise that class's score. kerastl takes the
feature map at the end of a layer group (by default the last group whose
output is still spatial: `top_conv` for EfficientNet-Lite0, `conv5` for a
ResNet), so it works on every image backbone in the registry.
"""

from __future__ import annotations

import keras
import numpy as np

from kerastl.groups import COARSE, HEAD, LayerGroups

MIN_MAP_SIZE = 7  # the default map: the last group at least this fine (7 x 7: Lite0 at 224)


def gradcam(
    model: keras.Model,
    images,
    group: str | None = None,
    *,
    class_index=None,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM maps of `images`, one per image, at the images' size.

    Args:
        model: an image `TransferModel` (logits out).
        images: `[n, H, W, 3]` raw pixels in [0, 255], as the model takes them.
        group: the coarse (or fine) group whose output is explained; None:
            the last group whose spatial (`[batch, h, w, channels]`) output is
            at least `MIN_MAP_SIZE` (7) on a side, else the last spatial one
            (a 1 x 1 map, ConvNeXt's last stage at 32 px, is the same everywhere).
        class_index: the class each map explains: None (the predicted class),
            an int (the same for every image) or one int per image (e.g. the
            true labels).
        batch_size: images per gradient computation.

    Returns:
        `[n, H, W]` float32 maps in [0, 1] (each divided by its maximum; all
        zero where nothing raises the class's score).

    Raises:
        ValueError: a text model, a group without a spatial output, or
            `class_index` outside the classes.

    Example:
        >>> maps = kerastl.gradcam(model, images)           # the predicted classes
        >>> maps = kerastl.gradcam(model, images, "block6", class_index=labels)
    """
    import tensorflow as tf

    if getattr(model, "modality", "image") != "image":
        raise ValueError(
            f"Grad-CAM explains image models. Received: a {model.modality} model {model.name!r}."
        )
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"`images` must be [n, H, W, 3]. Received: shape {images.shape}.")
    explained = _feature_and_logits(model, group or last_spatial_group(model, MIN_MAP_SIZE))
    classes = _class_indices(class_index, len(images), int(model.output_shape[-1]))
    maps = []
    for start in range(0, len(images), batch_size):
        batch = tf.constant(images[start : start + batch_size])
        with tf.GradientTape() as tape:
            features, logits = explained(batch, training=False)
            if classes is None:
                wanted = tf.argmax(logits, axis=-1)
            else:
                wanted = classes[start : start + batch_size]
            score = tf.gather(logits, tf.cast(wanted, tf.int32), axis=1, batch_dims=1)
        gradients = tape.gradient(score, features)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        maps.append((cam / tf.where(peak > 0, peak, 1.0)).numpy())
    return np.concatenate(maps).astype(np.float32)


def last_spatial_group(model: keras.Model, min_size: int = 1) -> str:
    """The last coarse group (before the head) whose output is a feature map.

    Args:
        model: an image `TransferModel`.
        min_size: the smallest height and width of that map (at the model's
            input size); the last spatial group is taken if none is as large.

    Returns:
        The group's name.

    Raises:
        ValueError: no group has a `[batch, h, w, channels]` output (a
            backbone that outputs tokens, such as ViT).

    Example:
        >>> last_spatial_group(model)
        'top_conv'
    """
    groups = LayerGroups.of(model)[COARSE]
    spatial = [
        name for name in groups if name != HEAD and len(_group_output(groups[name]).shape) == 4
    ]
    large = [name for name in spatial if _map_size(model, groups[name]) >= min_size]
    if large or spatial:
        return (large or spatial)[-1]
    raise ValueError(
        f"No layer group of {model.name!r} outputs a spatial feature map (its backbone "
        "outputs tokens): Grad-CAM needs one."
    )


def _feature_and_logits(model: keras.Model, group: str) -> keras.Model:
    """`images -> (the group's feature map, logits)`, sharing the model's layers."""
    groups = LayerGroups.of(model)
    granularity = COARSE if group in groups.names(COARSE) else groups.granularity_of(group)
    feature = _group_output(groups[granularity][group])
    if len(feature.shape) != 4:
        raise ValueError(
            f"Grad-CAM needs a spatial feature map; group {group!r} outputs shape "
            f"{tuple(feature.shape)}. Received: group={group!r}."
        )
    backbone = model.backbone
    inner = keras.Model(backbone.input, [feature, backbone.output])
    images = keras.Input(shape=model.input_shape[1:], name="image")
    features, output = inner(model.preprocessing_layer(images))
    return keras.Model(images, [features, model.classify(output)], name=f"{model.name}_gradcam")


def _map_size(model: keras.Model, layers) -> int:
    """The smaller side of a group's feature map at the model's input size."""
    height, width = _group_output(layers).shape[1:3]
    if height is None or width is None:  # a backbone built for any size: scale it
        height, width = keras.Model(
            model.backbone.input, _group_output(layers)
        ).compute_output_shape((1, *model.input_shape[1:]))[1:3]
    return min(int(height or 0), int(width or 0))


def _group_output(layers):
    """The output tensor of a group: its last layer's (in model order)."""
    return keras.tree.flatten(layers[-1].output)[0]


def _class_indices(class_index, count: int, classes: int):
    if class_index is None:
        return None
    wanted = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (count,))
    if wanted.min() < 0 or wanted.max() >= classes:
        raise ValueError(
            f"`class_index` must be in [0, {classes}). Received: class_index={class_index!r}."
        )
    return wanted
