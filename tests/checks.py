"""Reusable behaviour checks applied to every registered backbone."""

from __future__ import annotations

import os

import keras
import numpy as np
from PIL import Image

import kerastl
from kerastl.groups import COARSE, FINE, HEAD

TINY_TEXT = dict(num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, vocabulary_size=64)


def tiny_backbone(name: str) -> keras.Model:
    """The registry's backbone with random weights at a small size."""
    spec = kerastl.get_spec(name)
    if spec.modality == "text":
        overrides = dict(TINY_TEXT)
        if "bucket_size" in spec.hub_config:
            overrides["bucket_size"] = 8
        overrides["max_sequence_length"] = 16
        return kerastl.create_backbone(name, weights=None, **overrides)
    if name.startswith("vit"):
        return kerastl.create_backbone(
            name,
            weights=None,
            input_shape=(32, 32, 3),
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            mlp_dim=32,
        )
    side = max(spec.min_input_size, 32)
    return kerastl.create_backbone(name, weights=None, input_shape=(side, side, 3))


def small_convnext(layer_scale: float = 1e-6, classes: int = 3) -> kerastl.TransferModel:
    """Keras's ConvNeXt builder at one block of 8 channels per stage and 32 px, named
    as the registry's `convnexttiny` (its group rules): its stem and downsampling
    blocks are nested `Sequential`s, its layer scales weights created without a
    name, its 7x7 convolutions grouped (one channel a group) and its GELU exact.
    `layer_scale=1` makes every block count (ConvNeXt's 1e-6 nearly skips them)."""
    from keras.src.applications.convnext import ConvNeXt

    backbone = ConvNeXt(
        depths=[1, 1, 1, 1],
        projection_dims=[8, 8, 8, 8],
        layer_scale_init_value=layer_scale,
        name="convnext_tiny",
        include_top=False,
        input_shape=(32, 32, 3),
    )
    return kerastl.TransferModel(backbone, num_classes=classes, backbone_name="convnexttiny")


def run_group_test(model: keras.Model) -> None:
    """Groups cover every weight exactly once, in both granularities, and the
    coarse groups are unions of consecutive fine groups."""
    all_weights = {id(v) for v in model.weights}
    fine = kerastl.layer_groups(model, FINE)
    coarse = kerastl.layer_groups(model, COARSE)
    for groups in (fine, coarse):
        seen: dict[int, str] = {}
        for name, layers in groups.items():
            for layer in layers:
                for variable in layer.weights:
                    assert id(variable) not in seen, (
                        f"{variable.path} is in groups {seen[id(variable)]!r} and {name!r}"
                    )
                    seen[id(variable)] = name
        missing = [v.path for v in model.weights if id(v) not in seen]
        assert not missing, f"weights outside every group: {missing[:5]}"
        assert set(seen) == all_weights
        empty = [
            name for name, layers in groups.items() if not any(layer.weights for layer in layers)
        ]
        assert not empty, f"groups without weights: {empty}"
        _assert_named_layers_in_their_group(groups)
    flattened = [layer for layers in fine.values() for layer in layers]
    assert [layer for layers in coarse.values() for layer in layers] == flattened
    assert len(coarse) <= len(fine)


# Keras names the inner concatenation of InceptionV3's last block (`mixed10`) `mixed9_1`.
_MISLEADING_NAMES = {"mixed9_1": "mixed10"}


def _assert_named_layers_in_their_group(groups) -> None:
    """A layer named after a group (`conv2_block1_1_conv`, group `conv2_block1`) is in it."""
    where = {layer.name: name for name, layers in groups.items() for layer in layers}
    where = {layer: name for layer, name in where.items() if _MISLEADING_NAMES.get(layer) != name}
    for group in groups:
        misplaced = {
            layer: found
            for layer, found in where.items()
            if (layer == group or layer.startswith(group + "_")) and found != group
        }
        assert not misplaced, f"layers named after group {group!r} lie elsewhere: {misplaced}"


def run_freeze_test(model: keras.Model) -> None:
    """freeze / freeze_to / unfreeze leave exactly the expected variables trainable."""
    groups = kerastl.layer_groups(model)
    names = list(groups)
    # Layers the output does not depend on (a text backbone's unused pooler) never train.
    unused = {id(layer) for layer in getattr(model, "unused_layers", list)()}

    def expected_trainable(trainable_groups):
        ids = set()
        for name in trainable_groups:
            for layer in groups[name]:
                for sub in layer._flatten_layers(include_self=True):
                    if isinstance(sub, keras.layers.BatchNormalization) or id(sub) in unused:
                        continue
                    ids |= {id(v) for v in sub._trainable_variables}
        return ids

    def actual_trainable():
        return {id(v) for v in model.trainable_weights}

    trained = kerastl.freeze(model)
    assert trained == ([HEAD] if HEAD in groups else [])
    assert actual_trainable() == expected_trainable(trained)
    if HEAD in groups:
        assert actual_trainable(), "the head must train after freeze()"

    middle = names[len(names) // 2]
    trained = kerastl.freeze_to(model, middle)
    assert trained == names[names.index(middle) :]
    assert actual_trainable() == expected_trainable(trained)
    assert not any(
        v.trainable and id(v) in actual_trainable()
        for layers in (groups[n] for n in names[: names.index(middle)])
        for layer in layers
        for v in layer.weights
    )

    trained = kerastl.unfreeze(model)
    assert trained == names
    assert actual_trainable() == expected_trainable(names)
    batch_norm_gammas = {
        id(s.gamma)
        for s in model._flatten_layers()
        if isinstance(s, keras.layers.BatchNormalization) and s.scale
    }
    assert not (batch_norm_gammas & actual_trainable()), "BN must stay frozen by default"


def weights_snapshot(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.weights}


def assert_same_optimizer_state(expected, actual) -> None:
    """Same optimizer variables (paths and values: slots, iterations, rates)."""
    ours = {v.path: v.numpy() for v in expected.variables}
    theirs = {v.path: v.numpy() for v in actual.variables}
    assert ours.keys() == theirs.keys()
    for path, value in ours.items():
        np.testing.assert_array_equal(value, theirs[path], err_msg=path)


# scikit-learn's two bundled photos (china.jpg, flower.jpg): a real-image check offline.
SKLEARN_IMAGES = os.path.join(os.path.dirname(__import__("sklearn").__file__), "datasets", "images")


def image_folder_of(folder, classes, count, seed=0):
    """Writes `count` 12x12 PNGs per class in `folder/<class>/` (classes differ in brightness)."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.full((12, 12, 3), 40 * index, "uint8") + rng.integers(0, 30, (12, 12, 3))
            Image.fromarray(pixels.astype("uint8")).save(folder / name / f"{i}.png")


def assert_weights_close(model: keras.Model, expected: keras.Model, atol: float = 1e-5) -> None:
    """Every weight of `model` equals `expected`'s to `atol`."""
    for trained, other in zip(model.weights, expected.weights, strict=True):
        np.testing.assert_allclose(np.asarray(trained), np.asarray(other), atol=atol)


def assert_last_val_accuracy_is_the_models(history, model: keras.Model, validation) -> None:
    """The last logged `val_accuracy` is `model`'s accuracy on the one batch of `validation`."""
    x, y = next(iter(validation))
    accuracy = np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y)
    assert abs(history.history["val_accuracy"][-1] - accuracy) <= 1e-6
