"""LoRA by layer group (`kerastl.peft`): adapters, merge, saving, exports, stages."""

import json
import os
from collections import Counter

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf

import kerastl
import kerastl.export as kx
from kerastl._internals import sublayers
from kerastl.export import onnx_export
from kerastl.export.requests import run_signature
from kerastl.peft import adapted_layers, is_adapter

SIZE = 64
TEXTS = ["a great movie", "terrible and boring", "fine work", "awful acting"] * 2
LABELS = np.array([1, 0, 1, 0] * 2)


def _images(count, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, SIZE, SIZE, 3)).astype("float32")


def _lite0(num_classes=2):
    keras.utils.set_random_seed(0)
    return kerastl.TransferModel(
        "efficientnet-lite0", num_classes=num_classes, input_shape=(SIZE, SIZE, 3)
    )


def _minilm(num_classes=2):
    keras.utils.set_random_seed(0)
    return kerastl.TransferModel("all-minilm-l6-v2", num_classes=num_classes, sequence_length=16)


def _tokens(model):
    return model.preprocessor(tf.constant(TEXTS))


def _perturb_adapters(model, seed=1, scale=0.05):
    """Trained-looking adapters: B is zero until training moves it."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if is_adapter(variable):
            variable.assign(rng.normal(0, scale, variable.shape).astype("float32"))


def _base_values(model):
    head = {id(v) for v in model.head_layer.weights}
    return {id(v): np.array(v) for v in model.weights if not is_adapter(v) and id(v) not in head}


# --- the Keras behaviour worked around ---


def test_keras_saves_an_adapted_layer_merged_and_zeroes_its_adapters_on_load(tmp_path):
    """Why adapted layers save their raw variables here (`_keep_adapters_when_saved`)."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))
    layer = model.get_layer("dense")
    kernel = np.array(layer._kernel)
    layer.enable_lora(2)
    layer.lora_kernel_b.assign(np.ones((2, 3), "float32"))
    model.save_weights(tmp_path / "w.weights.h5")
    layer.lora_kernel_b.assign(np.zeros((2, 3), "float32"))
    model.load_weights(tmp_path / "w.weights.h5")
    assert not np.array(layer.lora_kernel_b).any()  # the trained adapter is gone...
    assert not np.allclose(np.array(layer._kernel), kernel)  # ...folded into the base


# --- adapters and what trains ---


@pytest.mark.slow
def test_after_lora_only_adapters_and_head_train_and_a_fit_step_moves_no_base_weight():
    model = _lite0()
    paths = kerastl.lora(model, rank=4, groups=["block6"])
    assert paths and all(path.startswith("block6") for path in paths)
    trainable = model.trainable_weights
    head = {id(v) for v in model.head_layer.weights}
    assert all(is_adapter(v) or id(v) in head for v in trainable)
    assert sum(is_adapter(v) for v in trainable) == 2 * len(paths)
    assert kerastl.trainable_groups(model)["block6"] == "lora"
    assert kerastl.trainable_groups(model)["block7"] == "frozen"
    base = _base_values(model)
    adapters = {id(v): np.array(v) for v in trainable if is_adapter(v)}
    model.compile(keras.optimizers.Adam(1e-2))
    model.fit(_images(8), np.array([0, 1] * 4), epochs=2, batch_size=4, verbose=0)
    for variable in model.weights:
        if id(variable) in base:  # BatchNorm statistics included
            np.testing.assert_array_equal(np.array(variable), base[id(variable)], variable.path)
    moved = [not np.array_equal(np.array(v), adapters[id(v)]) for v in trainable if is_adapter(v)]
    assert all(moved)


@pytest.mark.slow
def test_minilm_lora_trains_query_value_adapters_and_leaves_the_base_bit_identical():
    model = _minilm()
    paths = kerastl.lora(model, rank=8)
    assert len(paths) == 12  # query and value in each of 6 layers
    assert {path.rsplit("/", 1)[-1] for path in paths} == {"query", "value"}
    states = kerastl.trainable_groups(model)
    assert states == {
        "embeddings": "frozen",
        "encoder": "lora",
        "pooler": "frozen",
        "head": "trainable",
    }
    counted = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    total = sum(int(np.prod(v.shape)) for v in model.weights if not is_adapter(v))
    assert counted / total < 0.02  # the budget: <= 2% of full fine-tuning's
    base = _base_values(model)
    model.compile(keras.optimizers.Adam(1e-2))
    model.fit(TEXTS, LABELS, epochs=1, batch_size=4, verbose=0)
    for variable in model.weights:
        if id(variable) in base:
            np.testing.assert_array_equal(np.array(variable), base[id(variable)], variable.path)


def test_freezing_keeps_an_adapted_group_training_only_its_adapters():
    model = _lite0()
    kerastl.lora(model, rank=2, groups=["block6"])
    kerastl.unfreeze(model)  # Keras's trainable setter would unfreeze the base kernels
    block6 = kerastl.group_variables(model)["block6"]
    assert all(v.trainable == is_adapter(v) for v in block6)
    assert kerastl.trainable_groups(model)["block7"] == "trainable"
    kerastl.freeze_to(model, "block7")
    assert not any(v.trainable for v in block6)
    assert kerastl.trainable_groups(model)["block6"] == "frozen"


def test_default_groups_follow_freeze_to():
    model = _lite0()
    kerastl.freeze_to(model, "block6")
    paths = kerastl.lora(model, rank=2)
    blocks = {path[:6] for path in paths}
    assert blocks == {"block6", "block7", "top_co"}  # nothing below the frozen boundary


def test_adapter_variables_go_to_their_groups_optimizer_with_weight_decay():
    model = _lite0()
    kerastl.lora(model, rank=2, groups=["block6", "block7"])
    optimizer = kerastl.discriminative_optimizer(
        model, 1e-3, lr_mult=10, optimizer=keras.optimizers.AdamW(weight_decay=0.01)
    )
    model.compile(optimizer)
    optimizer.build(model.trainable_variables)
    from kerastl._internals import optimizer_for

    rates = kerastl.group_learning_rates(model, 1e-3, lr_mult=10)
    for variable in model.trainable_variables:
        if is_adapter(variable):
            chosen = optimizer_for(optimizer, variable)
            group = variable.path[:6]
            assert np.isclose(float(chosen.learning_rate), rates[group])
            assert chosen.weight_decay == 0.01  # 2-D factors decay like kernels


# --- merging ---


@pytest.mark.parametrize("build", [_lite0, _minilm], ids=["lite0", "minilm"])
def test_merge_lora_computes_what_the_adapted_model_computes(build):
    model = build()
    kerastl.lora(model, rank=4, targets="all")
    _perturb_adapters(model)
    inputs = _images(4) if model.modality == "image" else _tokens(model)
    adapted = np.array(model(inputs))
    merged = kerastl.merge_lora(model)
    assert not adapted_layers(merged)
    assert not any(is_adapter(v) for v in merged.weights)
    assert len(merged.weights) == len([v for v in model.weights if not is_adapter(v)])
    np.testing.assert_allclose(np.array(merged(inputs)), adapted, atol=1e-5)
    base = build()  # the adapters matter: without them the outputs differ
    assert np.abs(np.array(base(inputs)) - adapted).max() > 1e-3
    assert adapted_layers(model)  # the adapted model keeps its adapters


@pytest.mark.slow
def test_a_merged_text_model_takes_raw_strings_and_equals_the_adapted_one(tmp_path):
    model = _minilm()
    kerastl.lora(model, rank=4)
    _perturb_adapters(model)
    adapted = keras.activations.softmax(model.predict(TEXTS, verbose=0)).numpy()
    merged = kerastl.merge_lora(model)  # once lost the tokenizer's vocabulary
    np.testing.assert_allclose(
        keras.activations.softmax(merged.predict(TEXTS, verbose=0)).numpy(), adapted, atol=1e-4
    )
    merged.save(tmp_path / "merged.keras")
    loaded = keras.models.load_model(tmp_path / "merged.keras")
    np.testing.assert_allclose(
        keras.activations.softmax(loaded.predict(TEXTS, verbose=0)).numpy(), adapted, atol=1e-4
    )
    path = kx.saved_model(merged, tmp_path / "serving", signatures=("token_ids",))
    tokens = {name: np.asarray(value, np.int32) for name, value in _tokens(model).items()}
    served = run_signature(tf.saved_model.load(path).signatures["token_ids"], tokens)
    np.testing.assert_allclose(served["probabilities"], adapted, atol=1e-4)


def test_merging_a_merged_model_or_a_plain_one_is_refused():
    model = _lite0()
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        kerastl.merge_lora(model)
    kerastl.lora(model, rank=2, groups=["top_conv"])
    merged = kerastl.merge_lora(model)
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        kerastl.merge_lora(merged)
    with pytest.raises(ValueError, match="no LoRA adapters to save"):
        kerastl.save_lora(merged, "x.lora.npz")


# --- saving ---


@pytest.mark.parametrize("build", [_lite0, _minilm], ids=["lite0", "minilm"])
def test_keras_round_trip_keeps_adapters_base_and_trainable_state(build, tmp_path):
    model = build()
    kerastl.lora(model, rank=4, alpha=8)
    _perturb_adapters(model)
    inputs = _images(4) if model.modality == "image" else _tokens(model)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]
    for saved, restored in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(np.array(restored), np.array(saved), saved.path)
    assert [v.path for v in loaded.trainable_weights] == [v.path for v in model.trainable_weights]
    layer = adapted_layers(loaded)[0]
    assert (layer.lora_rank, layer.lora_alpha) == (4, 8)
    np.testing.assert_allclose(np.array(loaded(inputs)), np.array(model(inputs)), atol=1e-6)


def test_adapter_file_round_trip_onto_a_fresh_model(tmp_path):
    model = _minilm()
    kerastl.lora(model, rank=8)
    _perturb_adapters(model)
    model.head_layer.kernel.assign(np.random.default_rng(2).normal(0, 0.1, (384, 2)))
    path = kerastl.save_lora(model, tmp_path / "reviews.lora.npz")
    assert os.path.getsize(path) < 2_000_000  # MiniLM itself is ~90 MB
    fresh = kerastl.load_lora(_minilm(), path)
    tokens = _tokens(model)
    np.testing.assert_allclose(np.array(fresh(tokens)), np.array(model(tokens)), atol=1e-6)
    assert [v.path for v in fresh.trainable_weights] == [v.path for v in model.trainable_weights]


@pytest.mark.slow
def test_an_adapter_file_refuses_another_base_naming_it(tmp_path):
    model = _lite0()
    kerastl.lora(model, rank=2, groups=["block6"])
    path = kerastl.save_lora(model, tmp_path / "a.lora.npz")
    other = _lite0()
    layer = next(x for x in sublayers(other) if x.name == "block5a_expand_conv")
    layer.kernel.assign(np.array(layer.kernel) * 1.01)
    with pytest.raises(ValueError, match=r"1 of .* layers differ, the first 'block5a_expand_conv'"):
        kerastl.load_lora(other, path)
    with pytest.raises(ValueError, match="another backbone"):
        kerastl.load_lora(kerastl.TransferModel("mobilenetv3small", 2, weights=None), path)
    with pytest.raises(ValueError, match="another number of classes"):
        kerastl.load_lora(_lite0(num_classes=3), path)
    kerastl.lora(model, rank=2, groups=["block7"])  # adapters beside the file's too
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        kerastl.load_lora(model, path)
    (tmp_path / "other.npz").write_bytes(b"")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not an adapter file"):
        kerastl.load_lora(other, tmp_path / "other.npz")


# --- exports ---


@pytest.mark.slow
def test_exports_of_a_lora_model_are_merged_and_pass_the_parity_gate(tmp_path):
    model = _lite0()
    kerastl.lora(model, rank=4, groups=["block6", "block7", "top_conv"])
    _perturb_adapters(model, scale=0.02)
    path = kx.onnx(model, tmp_path / "lora.onnx", samples=_images(4))
    graph = onnx.load(path).graph
    names = [i.name for i in graph.initializer] + [n.name for n in graph.node]
    assert not [name for name in names if "lora" in name]
    plain = onnx_export.convert(_lite0(), "image_tensor", 17).graph  # the same model, no LoRA
    assert Counter(n.op_type for n in graph.node) == Counter(n.op_type for n in plain.node)
    assert len(graph.initializer) == len(plain.initializer)
    report = json.loads((tmp_path / "lora.onnx.parity.json").read_text())
    assert report["passed"]
    saved = kx.saved_model(model, tmp_path / "serving", samples=_images(4))
    loaded = tf.saved_model.load(saved)
    assert not [v.name for v in loaded.variables if "lora" in v.name]
    assert adapted_layers(model)  # exported from a merged copy


# --- errors ---


@pytest.fixture(scope="module")
def unadapted_lite0():
    """One Lite0 for the refusals: each leaves it without adapters, and asserts so."""
    return _lite0()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"groups": ["block9"]}, "Unknown layer group 'block9'"),
        ({"groups": ["head"]}, "head trains fully"),
        ({"rank": 0}, "`rank` must be a positive integer. Received: rank=0"),
        ({"rank": 2.5}, "`rank` must be a positive integer"),
        ({"alpha": -1}, "`alpha` must be a positive number"),
        ({"targets": "everything"}, "`targets` must be one of"),
        (
            {"targets": ["block6a_dwconv"], "groups": ["block6"]},
            "cannot add LoRA to DepthwiseConv2D",
        ),
        ({"targets": "query_value", "groups": ["block6"]}, "No layer of groups \\['block6'\\]"),
    ],
)
def test_lora_refuses_bad_arguments_naming_them(kwargs, message, unadapted_lite0):
    with pytest.raises(ValueError, match=message):
        kerastl.lora(unadapted_lite0, **kwargs)
    assert not adapted_layers(unadapted_lite0)


def test_lora_twice_on_a_layer_is_refused():
    model = _lite0()
    kerastl.lora(model, rank=2, groups=["top_conv"])
    with pytest.raises(ValueError, match="already has LoRA adapters \\(rank 2\\)"):
        kerastl.lora(model, rank=4, groups=["top_conv"])
