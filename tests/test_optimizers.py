"""Per-group optimizers: exact numerics, rates per formula, weight decay, serialization."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from checks import TINY_TEXT, assert_same_optimizer_state, small_convnext

import kerastl
from kerastl.groups import group_variables

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _vgg(seed=0):
    keras.utils.set_random_seed(seed)
    return kerastl.TransferModel("vgg16", num_classes=3, weights=None, input_shape=(32, 32, 3))


def _batch(n=4):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, 32, 32, 3)).astype("float32"), np.arange(n) % 3


def _routing(optimizer, model):
    """variable path -> the sub-optimizer the MultiOptimizer gives it."""
    optimizer.build(model.trainable_variables)
    return {v.path: optimizer._optimizer_map(v) for v in model.trainable_variables}


@pytest.mark.slow
def test_one_fit_step_equals_two_plain_adams_applied_by_hand():
    model, reference = _vgg(), _vgg()
    reference.set_weights(model.get_weights())
    x, y = _batch()
    optimizer = kerastl.group_optimizer(
        model, {"head": keras.optimizers.Adam(1e-3)}, default=keras.optimizers.Adam(1e-5)
    )
    model.compile(optimizer, LOSS)
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)

    head = [v for v in reference.trainable_variables if v.path.startswith("head_dense")]
    body = [v for v in reference.trainable_variables if not v.path.startswith("head_dense")]
    with tf.GradientTape() as tape:
        loss = LOSS(y, reference(x, training=True))
    grads = dict(
        zip(
            [v.path for v in reference.trainable_variables],
            tape.gradient(loss, reference.trainable_variables),
            strict=True,
        )
    )
    keras.optimizers.Adam(1e-3).apply([grads[v.path] for v in head], head)
    keras.optimizers.Adam(1e-5).apply([grads[v.path] for v in body], body)

    # Adam's first step moves every weight whose gradient exceeds epsilon by about its
    # rate (m / sqrt(v) = sign(g)): a misrouted variable is off by ~1e-3 or ~1e-5. The
    # graph `fit` step and this eager one may round differently (oneDNN, another CPU's
    # kernels: 1.1e-11 seen on an AMD EPYC), so allow 1% of the smaller rate.
    for ours, theirs in zip(model.weights, reference.weights, strict=True):
        np.testing.assert_allclose(
            ours.numpy(), theirs.numpy(), rtol=0, atol=1e-7, err_msg=ours.path
        )


def test_every_trainable_variable_is_routed_to_its_groups_optimizer():
    model = _vgg()
    head, early, rest = (
        keras.optimizers.Adam(1e-3),
        keras.optimizers.SGD(1e-4),
        keras.optimizers.Adam(1e-5),
    )
    optimizer = kerastl.group_optimizer(
        model, {"head": head, ("block1", "block2"): early}, default=rest
    )
    routing = _routing(optimizer, model)
    expected = {"head": head, "block1": early, "block2": early}
    for group, variables in group_variables(model).items():
        for variable in variables:
            assert routing[variable.path] is expected.get(group, rest), variable.path
    assert len(routing) == len(model.trainable_variables)


def test_group_optimizer_errors_name_the_problem():
    model = _vgg()
    with pytest.raises(ValueError, match=r"Unknown layer group 'conv5'.*'block5'"):
        kerastl.group_optimizer(
            model, {"conv5": keras.optimizers.Adam()}, default=keras.optimizers.Adam()
        )
    with pytest.raises(ValueError, match=r"Layer groups \['block1'.*have no optimizer"):
        kerastl.group_optimizer(model, {"head": keras.optimizers.Adam()})
    with pytest.raises(ValueError, match="given two optimizers"):
        kerastl.group_optimizer(
            model,
            {"head": keras.optimizers.Adam(), ("head",): keras.optimizers.SGD()},
            default=keras.optimizers.Adam(),
        )
    with pytest.raises(TypeError, match="plain Keras optimizer"):
        kerastl.group_optimizer(model, {"head": "adam"}, default=keras.optimizers.Adam())


def _rates_by_group(optimizer, model, granularity):
    routing = _routing(optimizer, model)
    return {
        group: float(routing[variables[0].path].learning_rate.numpy())
        for group, variables in group_variables(model, granularity).items()
    }


def test_fastai_spread_for_a_resnet():
    model = kerastl.TransferModel("resnet50", num_classes=2, weights=None, input_shape=(32, 32, 3))
    optimizer = kerastl.discriminative_optimizer(model, base_lr=1e-3, lr_mult=100)
    rates = _rates_by_group(optimizer, model, "coarse")
    names = ["stem", "conv2", "conv3", "conv4", "conv5", "head"]
    assert list(rates) == names
    for i, name in enumerate(names):
        assert rates[name] == pytest.approx(1e-5 * 100 ** (i / 5), rel=1e-6)


def test_layer_wise_decay_for_a_tiny_bert():
    backbone = kerastl.create_backbone(
        "bert_base_en_uncased", weights=None, max_sequence_length=16, **TINY_TEXT
    )
    model = kerastl.TransferModel(backbone, num_classes=2)
    optimizer = kerastl.discriminative_optimizer(model, base_lr=2e-4, decay=0.5)
    rates = _rates_by_group(optimizer, model, "fine")
    names = ["embeddings", "layer_0", "layer_1", "pooler", "head"]
    assert list(rates) == names
    for i, name in enumerate(names):
        assert rates[name] == pytest.approx(2e-4 * 0.5 ** (4 - i), rel=1e-6)


def test_layer_wise_decay_for_a_resnet_uses_blocks():
    model = kerastl.TransferModel("resnet50", num_classes=2, weights=None, input_shape=(32, 32, 3))
    rates = kerastl.group_learning_rates(model, 1e-3, decay=0.9, granularity="fine")
    assert len(rates) == 18 and rates["head"] == 1e-3
    assert rates["conv5_block3"] == pytest.approx(9e-4) and rates["stem"] == pytest.approx(
        1e-3 * 0.9**17
    )


def test_discriminative_optimizer_validates_its_arguments():
    model = _vgg()
    with pytest.raises(ValueError, match="not both"):
        kerastl.discriminative_optimizer(model, 1e-3, lr_mult=10, decay=0.5)
    with pytest.raises(ValueError, match=r"decay=1\.5"):
        kerastl.discriminative_optimizer(model, 1e-3, decay=1.5)
    with pytest.raises(ValueError, match="base_lr=-1"):
        kerastl.discriminative_optimizer(model, -1)
    with pytest.raises(ValueError, match=r"an optimizer goes in `optimizer=`.*base_lr=<keras.*SGD"):
        kerastl.discriminative_optimizer(model, keras.optimizers.SGD(0.1))  # not a TypeError


def _decay_step(model, optimizer):
    """One step with zero gradients: only weight decay can move variables."""
    for variable in model.trainable_variables:
        if len(variable.shape) == 1 or variable.name == "bias":
            variable.assign(np.full(variable.shape, 0.5, "float32"))
    optimizer.build(model.trainable_variables)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    optimizer.apply(
        [tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables
    )
    return {
        v.path for v in model.trainable_variables if not np.array_equal(before[v.path], v.numpy())
    }


def test_biases_and_norms_get_no_weight_decay_kernels_do():
    backbone = kerastl.create_backbone(
        "bert_base_en_uncased", weights=None, max_sequence_length=16, **TINY_TEXT
    )
    model = kerastl.TransferModel(backbone, num_classes=2)
    template = keras.optimizers.SGD(0.1, weight_decay=0.1)
    changed = _decay_step(model, kerastl.discriminative_optimizer(model, 1e-2, optimizer=template))
    exempt = {v.path for v in model.trainable_variables if len(v.shape) <= 1 or v.name == "bias"}
    kernels = {v.path for v in model.trainable_variables} - exempt
    assert any("layer_norm" in p and p.endswith("gamma") for p in exempt)
    assert "transformer_layer_0/self_attention_layer/query/bias" in exempt  # 2-D bias
    assert not changed & exempt
    assert kernels <= changed and any("embedding" in p for p in kernels)


@pytest.mark.parametrize("template", ["sgd", "adamw"])
def test_biases_and_norms_get_no_weight_decay_under_any_decaying_optimizer(template):
    """AdamW refuses `weight_decay=None`: its exempt twin decays by 0.0 instead."""
    model = _vgg()
    optimizer = {
        "sgd": keras.optimizers.SGD(0.1, weight_decay=0.1),
        "adamw": keras.optimizers.AdamW(0.1, weight_decay=0.1),
    }[template]
    changed = _decay_step(model, kerastl.discriminative_optimizer(model, 1e-2, optimizer=optimizer))
    assert "head_dense/bias" not in changed and "block1_conv1/bias" not in changed
    assert "head_dense/kernel" in changed and "block1_conv1/kernel" in changed


def test_weight_decay_exclusions_survive_save_and_load(tmp_path):
    model = _vgg()
    optimizer = kerastl.group_optimizer(
        model,
        {"head": keras.optimizers.SGD(0.1, weight_decay=0.1)},
        default=keras.optimizers.SGD(0.01, weight_decay=0.1),
    )
    model.compile(optimizer, LOSS)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    changed = _decay_step(loaded, loaded.optimizer)
    assert "head_dense/bias" not in changed and "block1_conv1/bias" not in changed
    assert "head_dense/kernel" in changed and "block1_conv1/kernel" in changed


def test_keras_exclude_from_weight_decay_is_lost_on_reload(tmp_path):
    """Why 1-D variables get a twin optimizer instead: Keras keeps the
    exclusion outside the optimizer's config. If this fails, Keras fixed it."""
    model = _vgg()
    optimizer = keras.optimizers.SGD(0.1, weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    model.compile(optimizer, LOSS)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert "head_dense/bias" in _decay_step(loaded, loaded.optimizer)


@pytest.mark.slow
def test_save_load_restores_types_rates_iterations_and_slots(tmp_path):
    model = _vgg()
    optimizer = kerastl.group_optimizer(
        model,
        {"head": keras.optimizers.Adam(1e-3), "block5": keras.optimizers.RMSprop(1e-4)},
        default=keras.optimizers.SGD(1e-5, momentum=0.9),
    )
    model.compile(optimizer, LOSS)
    x, y = _batch()
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, keras.optimizers.MultiOptimizer)
    assert len(loaded.optimizer.optimizers) == len(model.optimizer.optimizers) == 3
    assert len(model.optimizer.variables) > 10
    assert_same_optimizer_state(model.optimizer, loaded.optimizer)
    kinds = {type(o).__name__: float(o.learning_rate.numpy()) for o in loaded.optimizer.optimizers}
    assert kinds == pytest.approx({"Adam": 1e-3, "RMSprop": 1e-4, "SGD": 1e-5})
    loaded.fit(x, y, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 3


@pytest.mark.slow
def test_a_convnext_loads_with_each_weight_on_its_group_s_optimizer(tmp_path):
    """The map is keyed by paths, and two kinds change when Keras deserializes the
    model: a nested model's weights lose its name, and an unnamed weight is numbered
    from a count that ran on (here: `small_convnext` built again in between). Keyed
    by the built paths, the reloaded optimizer put the downsampling norms on the
    default optimizer, and loading failed on slots of the wrong shape."""
    model = small_convnext()
    paths = [v.path for v in model.trainable_variables]
    assert any(p.startswith("convnext_tiny_stem/") for p in paths)
    assert any(p.rpartition("/")[2].startswith("variable") for p in paths)
    model.compile(
        kerastl.discriminative_optimizer(
            model, 1e-3, optimizer=keras.optimizers.AdamW(weight_decay=0.05)
        ),
        LOSS,
    )
    x, y = _batch()
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    small_convnext()
    loaded = kerastl.load_model(tmp_path / "m.keras")
    assert [v.path for v in loaded.trainable_variables] != paths  # what the keys must survive
    routing = _routing(model.optimizer, model)
    assert [routing[p].name for p in paths] == [
        loaded.optimizer._optimizer_map(v).name for v in loaded.trainable_variables
    ]
    # 7 groups, each with its no-decay twin but post_norm (only norm scales and offsets)
    assert len({routing[p].name for p in paths}) == 13
    for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())


@pytest.mark.slow
def test_schedules_per_group_serialize_and_follow_their_formula(tmp_path):
    model = _vgg()
    optimizer = kerastl.discriminative_optimizer(
        model, 1e-3, lr_mult=10, schedule=kerastl.warmup_cosine(total_steps=10, warmup_steps=2)
    )
    model.compile(optimizer, LOSS)
    model.fit(*_batch(), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    head = _routing(loaded.optimizer, loaded)["head_dense/kernel"]
    schedule = head._learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert float(schedule(2)) == pytest.approx(1e-3) and float(schedule(1)) == pytest.approx(5e-4)
    assert float(schedule(10)) == pytest.approx(0.0, abs=1e-9)


def test_one_cycle_rises_to_the_peak_and_falls():
    schedule = kerastl.OneCycle(1e-2, total_steps=101, pct_start=0.3)
    values = [float(schedule(s)) for s in range(101)]
    peak = int(np.argmax(values))
    assert values[0] == pytest.approx(1e-2 / 25, rel=1e-5)
    assert values[peak] == pytest.approx(1e-2, rel=1e-5)
    assert 25 <= peak <= 30 and values[-1] == pytest.approx(1e-2 / 25 / 1e4, rel=1e-3)
    assert all(a <= b for a, b in itertools.pairwise(values[: peak + 1]))
    clone = kerastl.OneCycle.from_config(schedule.get_config())
    assert float(clone(40)) == pytest.approx(values[40], rel=1e-6)


def test_ema_clipping_and_accumulation_pass_through_to_every_group():
    model = _vgg()
    template = keras.optimizers.Adam(clipnorm=1.0, use_ema=True, gradient_accumulation_steps=2)
    optimizer = kerastl.discriminative_optimizer(model, 1e-3, optimizer=template)
    model.compile(optimizer, LOSS)
    model.fit(*_batch(), batch_size=2, epochs=1, verbose=0)
    subs = [o for o in model.optimizer.optimizers if o.built]
    assert len(subs) == 6
    for sub in subs:
        assert sub.clipnorm == 1.0 and sub.use_ema and sub.gradient_accumulation_steps == 2
        assert sub._model_variables_moving_average  # EMA copies exist and were used
    assert int(model.optimizer.iterations.numpy()) == 2
