"""Stage options that change the network or its inputs: stochastic depth
(`drop_path`) and progressive resizing (`image_size`)."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import assert_last_val_accuracy_is_the_models, assert_weights_close

import kerastl
from kerastl.training.drop_path import drop_path_layers, reset_drop_path
from kerastl.training.stage_compile import stage_loss, stage_optimizer
from kerastl.training.stage_plan import plan_stages


def _values(variables):
    return [np.array(v) for v in variables]


def _lite0(seed=0):
    keras.utils.set_random_seed(seed)
    return kerastl.TransferModel(
        "efficientnet-lite0", 3, weights=None, input_shape=(32, 32, 3), dropout=0.0
    )


def _images(count=24, batch=8, seed=0, size=32):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (count, size, size, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, rng.integers(0, 3, count))).batch(batch)


def _rates(model):
    return {layer.name: layer.rate for layer, _ in drop_path_layers(model)}


def test_lite0_has_its_drop_path_layers_switched_off_and_reloads_so(tmp_path):
    model = _lite0()
    layers = drop_path_layers(model)
    depths = [depth for _, depth in layers]
    # Lite0's residual blocks after the first: blocks 2b, 3b, 4b-c, 5b-c, 6b-d.
    assert len(layers) == 9 and max(depths) == 1.0 and min(depths) > 0
    assert set(_rates(model).values()) == {0.0}
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert len(drop_path_layers(reloaded)) == 9 and set(_rates(reloaded).values()) == {0.0}


def test_a_stage_drops_paths_only_in_the_blocks_it_trains():
    model = _lite0()
    _prepare(kerastl.Stage(1, train="block6", drop_path=0.3), model)
    rates = _rates(model)
    by_depth = dict((layer.name, depth) for layer, depth in drop_path_layers(model))
    for name, rate in rates.items():
        expected = 0.3 * by_depth[name] if name.startswith("block6") else 0.0
        assert rate == pytest.approx(expected), name
    assert rates["block6d_drop"] == pytest.approx(0.3)
    x = next(iter(_images()))[0]
    assert np.abs(model(x, training=True) - model(x, training=True)).max() > 1e-4
    reset_drop_path(model)
    assert set(_rates(model).values()) == {0.0}
    np.testing.assert_array_equal(model(x, training=True), model(x, training=True))


def test_keras_efficientnet_keeps_its_built_rates_in_trained_blocks_and_none_in_frozen_ones():
    keras.utils.set_random_seed(0)
    model = kerastl.TransferModel("efficientnetb0", 3, weights=None, input_shape=(32, 32, 3))
    built = _rates(model)
    assert max(built.values()) > 0.1  # Keras builds drop_connect_rate=0.2, deeper = higher
    _prepare(kerastl.Stage(1, train="block6"), model)
    for name, rate in _rates(model).items():
        assert rate == (built[name] if name.startswith(("block6", "block7")) else 0.0), name
    reset_drop_path(model)
    assert _rates(model) == built


@pytest.mark.slow
def test_drop_path_on_cached_features_equals_it_end_to_end_and_is_reset_after():
    """Frozen blocks never drop, so the cache (frozen layers in inference) and
    end-to-end training see the same network; the trained blocks draw the same
    seeded masks either way."""
    weights = []
    stage = kerastl.Stage(2, train="block6", lr=1e-2, drop_path=0.5)
    for cache in (True, False):
        model = _lite0()
        tuner = kerastl.FineTuner(model, cache_features=cache, cache_shuffle_seed=None, verbose=0)
        tuner.fit(_images(), _images(8, seed=1), stages=[stage])
        assert tuner.stage_summaries[0]["cached"] == ("block6" if cache else "no")
        assert set(_rates(model).values()) == {0.0}
        weights.append(_values(model.weights))
    for cached, uncached in zip(*weights, strict=True):
        np.testing.assert_allclose(cached, uncached, atol=1e-5)
    without = _lite0()
    kerastl.FineTuner(without, cache_shuffle_seed=None, verbose=0).fit(
        _images(), _images(8, seed=1), stages=[kerastl.Stage(2, train="block6", lr=1e-2)]
    )
    moved = max(
        np.abs(a - b).max() for a, b in zip(weights[0], _values(without.weights), strict=True)
    )
    assert moved > 1e-4  # the masks changed what trained


def test_drop_path_is_refused_where_nothing_trained_can_drop():
    with pytest.raises(ValueError, match=r"\[0, 1\).*drop_path=1\.0"):
        kerastl.Stage(1, drop_path=1.0)
    with pytest.raises(ValueError, match=r"trains none of its blocks.*drop_path=0\.2"):
        _prepare(kerastl.Stage(1, drop_path=0.2), _lite0())
    keras.utils.set_random_seed(0)
    plain = kerastl.TransferModel(_flexible_backbone(), 3, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"no drop-path layers.*drop_path=0\.2"):
        _prepare(kerastl.Stage(1, train="all", drop_path=0.2), plain)


def _prepare(stage, model):
    """Plans `stage` for `model` and sets the model up for it, as a `FineTuner` does."""
    plan_stages(model, [stage])[0].prepare(model)


def _flexible_backbone():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.ReLU()(x), name="flexible")


def _flexible_model():
    keras.utils.set_random_seed(0)
    return kerastl.TransferModel(
        _flexible_backbone(), 3, preprocessing="tf", input_shape=(32, 32, 3), dropout=0.0
    )


def test_a_resized_stage_trains_at_its_size_and_validates_at_the_models(capsys):
    stages = [kerastl.Stage(1, lr=1e-2), kerastl.Stage(2, train="all", lr=1e-2, image_size=16)]
    model = _flexible_model()
    tuner = kerastl.FineTuner(model, cache_shuffle_seed=None, restore_best=False, verbose=1)
    history = tuner.fit(_images(), _images(8, seed=1), stages=stages)
    printed = [line for line in capsys.readouterr().out.splitlines() if "caching" in line]
    assert printed == [
        "kerastl: caching pooled features (once) ...",
        "kerastl: not caching: the stage trains at 16 px.",
    ]
    assert model.input_shape == (None, 32, 32, 3)

    by_hand = _flexible_model()
    kerastl.FineTuner(by_hand, cache_shuffle_seed=None, verbose=0).fit(_images(), stages=stages[:1])
    small = _images().map(lambda x, y: (tf.image.resize(x, (16, 16), antialias=True), y))
    anywhere = by_hand.at_any_image_size()
    plan_stages(by_hand, stages)[1].prepare(by_hand)
    anywhere.compile(
        stage_optimizer(stages[1], by_hand, steps=2 * 3), stage_loss(stages[1]), jit_compile=False
    )
    anywhere.fit(small, epochs=2, verbose=0)
    assert_weights_close(model, by_hand)
    assert_last_val_accuracy_is_the_models(history, model, _images(8, seed=1))


def test_resizing_is_refused_where_the_model_takes_one_size():
    with pytest.raises(ValueError, match=r"takes 32x32 images only"):
        kerastl.FineTuner(_lite0(), verbose=0).fit(
            _images(), stages=[kerastl.Stage(1, train="all", image_size=16)]
        )
    with pytest.raises(ValueError, match=r"image_size"):
        kerastl.Stage(1, image_size=0)


def test_a_drop_path_nothing_can_use_is_refused_before_any_training():
    model = _lite0()
    before = _values(model.weights)
    stages = [kerastl.Stage(1, train="block6"), kerastl.Stage(1, drop_path=0.2)]
    with pytest.raises(ValueError, match=r"trains none of its blocks"):
        kerastl.FineTuner(model, verbose=0).fit(_images(), stages=stages)
    for unchanged, now in zip(before, _values(model.weights), strict=True):
        np.testing.assert_array_equal(unchanged, now)


def _model_state(model):
    """Everything planning a stage could change: flags, rates, layers, variables and adapters."""
    from kerastl._internals import sublayers

    layers = sublayers(model)
    return (
        [
            (id(layer), layer.name, layer.trainable, getattr(layer, "rate", None))
            for layer in layers
        ],
        [(variable.path, variable.trainable) for variable in model.weights],
        [getattr(layer, "lora_enabled", False) for layer in layers],
        [float(np.sum(np.abs(variable))) for variable in model.weights],
    )


STAGE_KINDS = {
    "head": kerastl.Stage(1, train="head"),
    "group": kerastl.Stage(1, train="block6"),
    "all": kerastl.Stage(1, train="all"),
    "lora": kerastl.Stage(1, train="block6", rank=4),
    "drop_path": kerastl.Stage(1, train="block5", drop_path=0.1),
    "lora_drop_path": kerastl.Stage(1, train="block6", rank=4, drop_path=0.1),
    "resized": kerastl.Stage(1, train="block6", image_size=24),
    "mixing": kerastl.Stage(1, train="block7", mixup=0.2),
}
# What each kind trains from (`first`) and where it is cut (None: end to end).
PLANNED = {
    "head": ("head", "pooled features"),
    "group": ("block6", "block6"),
    "all": ("all", None),
    "lora": ("block6a", "block6a"),
    "drop_path": ("block5", "block5"),
    "lora_drop_path": ("block6a", "block6a"),
    "resized": ("block6", None),
    "mixing": ("block7", None),
}

SAME_CUT = {"group", "lora", "lora_drop_path"}  # block6 and block6a: the same tensors


@pytest.mark.slow
def test_planning_any_pair_of_stages_leaves_the_model_as_it_was():
    keras.utils.set_random_seed(0)  # Lite0 at any image size: the resized kind plans too
    model = kerastl.TransferModel(
        "efficientnet-lite0", 3, weights=None, input_shape=(None, None, 3), dropout=0.0
    )
    kerastl.freeze(model)  # a state none of the stages below sets alone
    before = _model_state(model)
    for first, second in itertools.product(STAGE_KINDS, repeat=2):
        plan = plan_stages(model, [STAGE_KINDS[first], STAGE_KINDS[second]], caching=True)
        assert _model_state(model) == before, (first, second)
        for kind, planned in zip((first, second), plan, strict=True):
            cut = None if planned.split is None else planned.split.boundary
            assert planned.target.first == PLANNED[kind][0], (first, second, kind)
            assert (planned.end_to_end is None) == (cut is not None)
        assert (plan[0].split and plan[0].split.boundary) == PLANNED[first][1], (first, second)
        if {first, second} <= SAME_CUT:  # one cut: one `Split`, named by the first stage
            assert plan[1].split is plan[0].split, (first, second)
        else:
            cut = None if plan[1].split is None else plan[1].split.boundary
            assert cut == PLANNED[second][1], (first, second)
        both = plan[0].split is not None and plan[1].split is not None
        below = both and plan[1].split.is_below(plan[0].split)  # read first, once
        assert plan[0].source is (plan[1].split if below else None), (first, second)


@pytest.mark.slow
def test_a_later_lora_drop_path_stage_leaves_an_earlier_all_stage_training_every_kernel():
    """Checking the second stage once added its adapters before the first ran, so
    stage 1 trained none of block6's base kernels (measured: 0 of 12)."""
    model = _lite0()
    block6 = [
        variable
        for layer in model.groups["coarse"]["block6"]
        for variable in layer.weights
        if variable.path.endswith("kernel")
    ]
    before = _values(block6)
    stages = [
        kerastl.Stage(1, train="all"),
        kerastl.Stage(1, train="block6", rank=4, drop_path=0.1),
    ]
    kerastl.FineTuner(model, verbose=0, restore_best=False).fit(_images(), stages=stages)
    moved = [not np.array_equal(a, b) for a, b in zip(before, _values(block6), strict=True)]
    assert len(moved) == 12 and all(moved)  # stage 2 trains adapters only: stage 1 moved them
