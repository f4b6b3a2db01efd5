"""`FusedAdam` / `FusedAdamW`: Keras's arithmetic, one kernel per variable, one rate per step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerastl
from kerastl.fused_adam import FusedAdam, FusedAdamW
from kerastl.training.schedules import warmup_cosine

# Same float32 formulas in another order (the kernel's `lr_t * m / (sqrt(v) + eps)`,
# the decay's `wd * lr` taken first): a few ulps per step, ~1e-7 of the weights after
# four steps. A decay skipped or applied twice moves them by wd * lr = 1e-3 per step.
RELATIVE = 1e-5


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 3, 32)


def _trained(optimizer):
    model = _model()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return model


def _relative(ours, theirs) -> float:
    difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(ours, theirs, strict=True)))
    return difference / np.sqrt(sum(np.sum(b**2) for b in theirs))


def _schedule():
    return warmup_cosine(4, 1)(1e-2)


@pytest.mark.parametrize(
    "fused, plain, options",
    [
        (FusedAdamW, keras.optimizers.AdamW, {"weight_decay": 0.1}),
        (FusedAdam, keras.optimizers.Adam, {}),
        (FusedAdam, keras.optimizers.Adam, {"weight_decay": 0.1}),
    ],
)
def test_a_fit_with_a_fused_optimizer_equals_keras_s(fused, plain, options):
    ours = _trained(fused(_schedule(), **options))
    theirs = _trained(plain(_schedule(), **options))
    assert int(ours.optimizer.iterations) == int(theirs.optimizer.iterations) == 4
    start = _model().get_weights()
    assert _relative(theirs.get_weights(), start) > 100 * RELATIVE  # the steps moved them
    assert _relative(ours.get_weights(), theirs.get_weights()) <= RELATIVE
    assert _relative(_slots(ours.optimizer), _slots(theirs.optimizer)) <= RELATIVE


def _slots(optimizer) -> list:
    """Adam's moments, every variable's, in order."""
    return [v.numpy() for v in optimizer.variables if v.path.endswith(("momentum", "velocity"))]


def test_excluded_variables_are_not_decayed():
    options = {"weight_decay": 0.1}
    ours, theirs = FusedAdamW(1e-2, **options), keras.optimizers.AdamW(1e-2, **options)
    for optimizer in (ours, theirs):
        optimizer.exclude_from_weight_decay(var_names=["bias"])
    ours, theirs = _trained(ours), _trained(theirs)
    assert _relative(ours.get_weights(), theirs.get_weights()) <= RELATIVE


def test_amsgrad_is_keras_s_own_update():
    ours = _trained(FusedAdam(1e-2, amsgrad=True))
    theirs = _trained(keras.optimizers.Adam(1e-2, amsgrad=True))
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # the same ops in the same order


def _after_steps(optimizer, gradients) -> np.ndarray:
    table = keras.Variable(np.ones((4, 2), "float32"))
    optimizer.build([table])
    for gradient in gradients:
        optimizer.apply([gradient], [table])
    return table.numpy()


def test_repeated_rows_of_a_sparse_gradient_are_summed_before_adam_squares_them():
    # An embedding's gradient arrives as rows with repeated indices (a token seen
    # twice in a batch). Keras's Adam squares each row before they are summed, so
    # its second moment is not the gradient's; the fused update sums first, as a
    # dense gradient (and PyTorch's) would. If Keras fixes it, `keras_sparse`
    # equals `keras_dense` and this test fails: keep the fix or drop it then.
    rows = tf.constant([[1.0, -2.0], [3.0, 0.5], [0.25, 1.0]])
    sparse = tf.IndexedSlices(rows, tf.constant([1, 1, 3]), tf.constant([4, 2]))
    dense = tf.convert_to_tensor(sparse)  # rows 1 and 3: [4, -1.5], [0.25, 1]
    keras_sparse = _after_steps(keras.optimizers.Adam(0.1), [sparse, sparse])
    keras_dense = _after_steps(keras.optimizers.Adam(0.1), [dense, dense])
    fused_sparse = _after_steps(FusedAdam(0.1), [sparse, sparse])
    # Steps of ~0.1; the bias correction 1 - 0.999**t, rounded to float32 by each
    # path its own way, is good to ~1e-5 of it: 1e-5 absolute, against > 1e-2.
    np.testing.assert_allclose(fused_sparse, keras_dense, rtol=0, atol=1e-5)
    assert np.abs(keras_sparse - keras_dense)[1].max() > 0.01  # Keras's sparse step differs
    # A single row: the same arithmetic through Keras's sparse and dense ops, a few
    # float32 ulps at most (6e-8 each near 0.8) on any CPU; the repeated row differs by > 1e-2.
    np.testing.assert_allclose(keras_sparse[3], keras_dense[3], rtol=0, atol=1e-6)


def _schedule_calls(optimizer, variables) -> int:
    """How many times one traced `apply` runs the warm-up schedule (one `cond` each)."""
    grads = [tf.ones(v.shape) for v in variables]
    optimizer.build(variables)
    graph = tf.function(lambda: optimizer.apply(grads, variables)).get_concrete_function().graph
    return sum(op.type in ("If", "StatelessIf") for op in graph.get_operations())


def test_keras_adamw_runs_the_schedule_once_per_variable_fused_once_per_step():
    # The Keras behaviour this module works around: its AdamW decay reads the rate
    # (the whole schedule) once per variable. If a Keras release stops doing so,
    # the first assertion fails: then measure again whether the fused update still pays.
    variables = [keras.Variable(np.ones((4, 4), "float32")) for _ in range(5)]
    assert _schedule_calls(keras.optimizers.AdamW(_schedule(), weight_decay=0.1), variables) == 6
    assert _schedule_calls(FusedAdamW(_schedule(), weight_decay=0.1), variables) == 1


def test_stages_build_fused_optimizers_that_serialize():
    model = kerastl.TransferModel("vgg16", num_classes=2, weights=None, input_shape=(32, 32, 3))
    from kerastl.training.stage_compile import stage_optimizer

    adamw = stage_optimizer(kerastl.Stage(1, train="all", optimizer="adamw", warmup=0.1), model, 10)
    adam = stage_optimizer(kerastl.Stage(1, optimizer="adam"), model, 10)
    assert type(adamw) is FusedAdamW and type(adam) is FusedAdam
    again = keras.optimizers.deserialize(keras.optimizers.serialize(adamw))
    assert type(again) is FusedAdamW
    assert again.weight_decay == adamw.weight_decay == 0.004
