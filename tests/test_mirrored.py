"""MirroredStrategy over 2 logical CPUs: every check in one child process
(`scripts/mirrored_checks.py`; logical devices must be set before TensorFlow
starts, and one child pays its start-up once)."""

import json

import pytest
from processes import run_script


@pytest.fixture(scope="module")
def checks() -> dict[str, list[dict]]:
    """The child's `CHECK` records by name, in the order it printed them."""
    result = run_script("mirrored_checks.py", timeout=600)
    records: dict[str, list[dict]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("CHECK "):
            record = json.loads(line.removeprefix("CHECK "))
            records.setdefault(record.pop("check"), []).append(record)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return records


@pytest.mark.slow
def test_split_cpu_after_tensorflow_started_explains_when_to_call_it(checks):
    (split,) = checks["split_cpu"]
    assert split["devices"] == ["/device:CPU:0", "/device:CPU:1"]
    assert "already initialized its devices (2 logical CPU)" in split["error"]
    assert "Call `kerastl.split_cpu()` first thing" in split["error"]


@pytest.mark.slow
def test_mirrored_epoch_equals_one_device_with_single_and_group_optimizers(checks):
    """The two replicas' all-reduced step equals one device's up to summation order.

    Compared as |update_mirrored - update_one_device| / |update_one_device| over all
    weights: a replica's gradient dropped, doubled or not averaged moves it by 0.5 or
    more; float32 summation order gave 2.1e-6 / 1.6e-7 (single / group) on an AMD EPYC
    for this small conv net (VGG16, used before, 1.6e-5 / 2.4e-5).
    """
    found = checks["equivalence"]
    assert [record["optimizer"] for record in found] == ["single", "group"]
    for record in found:
        assert record["relative"] <= 1e-3
        assert record["steps"] == [4, 4]


@pytest.mark.slow
def test_under_mirrored_strategy_fused_equals_keras_and_replicas_agree(checks):
    (fused,) = checks["fused_adam"]
    assert fused["relative"] <= 1e-5  # test_fused_adam.RELATIVE: a few ulps per step
    assert fused["replicas_equal"] is True


@pytest.mark.slow
def test_mirrored_mixed_float16_stays_finite_and_the_loss_scale_settles(checks):
    run = next(record for record in checks["mixed_precision"] if record["fixes"] == "1")
    assert run["wrapped"] == "AllReplicaLossScaleOptimizer" and run["loss_scaled"]
    assert len(run["finite_losses"]) == 40 and all(run["finite_losses"])
    assert run["finite_weights"] and run["finite_batch_norm"] and run["batch_norm_statistics"] == 4
    assert run["steps"] == 37  # three overflowing steps skipped, as on one device
    scales = run["scales"]
    assert scales[2] == 4096.0 and set(scales[2:]) == {4096.0}


@pytest.mark.slow
def test_without_the_fix_mirrored_mixed_float16_turns_the_weights_nan(checks):
    """The fixes switched off (KERASTL_KERAS_FIXES=0, read at each compile) in the same child."""
    run = next(record for record in checks["mixed_precision"] if record["fixes"] == "0")
    assert run["wrapped"] == "LossScaleOptimizer"  # Keras's own
    assert not run["finite_weights"] and not run["finite_batch_norm"]
    assert not any(run["finite_losses"][1:])


@pytest.mark.slow
def test_a_second_mirrored_strategy_in_one_process_trains(checks):
    (repeated,) = checks["repeated"]
    assert repeated["same_object"] is True and repeated["second_loss"] > 0
    # Without kerastl: two MirroredStrategy objects share collective keys.
    (raw,) = checks["raw_repeated"]
    assert raw["error"] and "Shape mismatch in the collective instance" in raw["error"]


@pytest.mark.slow
def test_a_model_built_under_the_strategy_exports_each_weight_once(checks):
    (export,) = checks["export"]
    assert export["stored"] == export["parameters"]  # Keras's `track`: twice
    assert export["collection"] == export["variables"]
