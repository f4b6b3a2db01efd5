"""`kerastl train` end to end on a tiny config: every artefact of the run directory."""

import csv
import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastl.app.cli import main
from kerastl.app.config import load_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (64, 32, 32, 3)).astype("float32")  # 16 validation: enough to gate
    y = np.arange(64) % 2
    x[y == 1, :16] = 255.0  # a learnable difference between the classes
    np.savez(root / "tiny.npz", x=x, y=y)
    (root / "tiny.yaml").write_text(
        f"""
name: tiny
output_dir: {root / "runs"}
model: {{backbone: efficientnet-lite0, weights: none, image_size: 32}}
data: {{source: "arrays:{root / "tiny.npz"}", batch_size: 8, validation_fraction: 0.25}}
stages:
  - {{epochs: 2, train: head, lr: 1.0e-2}}
  - {{epochs: 1, train: block7, lr: 1.0e-3, warmup: 0.2}}
"""
    )
    assert main(["train", str(root / "tiny.yaml"), "--set", "stages.0.lr=0.02", "--quiet"]) == 0
    return root / "runs" / "tiny"


@pytest.mark.slow
def test_the_run_directory_holds_every_artefact(run):
    expected = {
        "config.yaml",
        "history.csv",
        "learning_curves.png",
        "confusion_matrix.png",
        "best.weights.h5",
        "model.keras",
        "report.md",
        "saved_model",
        "logs",
    }
    assert expected <= {path.name for path in run.iterdir()}
    for png in ("learning_curves.png", "confusion_matrix.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_yaml_is_the_resolved_config_with_the_override(run):
    config = load_config(run / "config.yaml")
    assert config.stages[0].lr == 0.02 and config.stages[1].train == "block7"
    # `weights: none` resolves to None (random initialisation), written as null.
    assert config.model.weights is None and config.data.batch_size == 8
    assert "weights: null" in (run / "config.yaml").read_text()


def test_history_has_one_row_per_epoch_with_its_stage(run):
    with open(run / "history.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["stage"] for row in rows] == ["1:head", "1:head", "2:block7"]
    assert {"loss", "val_loss", "val_balanced_accuracy"} <= set(rows[0])


@pytest.mark.slow
def test_the_saved_models_load_and_agree(run):
    model = keras.models.load_model(run / "model.keras")
    served = tf.saved_model.load(str(run / "saved_model"))
    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    logits = served.signatures["image_tensor"](images=images)["logits"]
    np.testing.assert_allclose(logits, model.predict(images, verbose=0), atol=1e-5)
    assert json.loads((run / "saved_model/assets.extra/parity.json").read_text())["passed"]
    best = keras.models.load_model(run / "model.keras")
    best.load_weights(run / "best.weights.h5")
    np.testing.assert_allclose(best.predict(images, verbose=0), model.predict(images, verbose=0))


def test_report_names_the_stages_the_best_epoch_and_the_confusion_matrix(run):
    report = (run / "report.md").read_text()
    assert "| 1:head | 2 |" in report and "| 2:block7 | 1 |" in report
    assert "best epoch:" in report and "Confusion matrix" in report
    assert "validation balanced accuracy (model as saved)" in report


@pytest.mark.slow
def test_a_second_run_never_overwrites_the_first(run):
    config = run.parent.parent / "tiny.yaml"
    args = [
        "train",
        str(config),
        "--set",
        "stages=[{epochs: 1}]",
        "--set",
        "export=false",
        "--quiet",
    ]
    assert main(args) == 0
    assert (run.parent / "tiny-2" / "report.md").exists() and (run / "report.md").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.backbon=resnet50", "Did you mean 'backbone'?"),
        ("stages.0.lr=-1", "`lr` must be positive. Received: lr=-1.0"),
        ("data.source=ftp:x", "must start with tfds:, folder:, table: or arrays:"),
        ("stages.1.train=block9", "Unknown layer group 'block9'"),
        ("train.monitor=val_balanced_acc", "Did you mean 'val_balanced_accuracy'?"),
        ("data.tta=rotate", "`tta` must be one of ('dihedral', 'flip', 'none')"),
        (
            "data.tta=flip model.backbone=all-minilm-l6-v2",
            "`data.tta` views are image transforms; a text backbone takes none",
        ),
    ],
)
def test_bad_configs_exit_2_naming_the_problem(run, capsys, override, message):
    config = run.parent.parent / "tiny.yaml"
    runs = sorted(path.name for path in run.parent.iterdir())
    sets = [part for item in override.split() for part in ("--set", item)]
    assert main(["train", str(config), *sets, "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert sorted(path.name for path in run.parent.iterdir()) == runs  # no run directory


@pytest.mark.slow
def test_lr_find_suggests_a_rate_and_saves_its_curve(run, capsys):
    config = run.parent.parent / "tiny.yaml"
    assert main(["lr-find", str(config)]) == 0
    out = capsys.readouterr().out
    rate = float(out.split("Suggested learning rate for stage 1 (head): ")[1].split()[0])
    assert 1e-7 <= rate <= 10
    assert (run.parent / "tiny-lr-find" / "lr_find.png").stat().st_size > 0


@pytest.mark.slow
def test_export_command_publishes_a_bundle_and_names_bad_arguments(run, capsys):
    assert main(["export", str(run), "--signatures", "image_tensor"]) == 0
    version = run / "export" / "serving" / "tiny" / "1"
    assert (version / "saved_model.pb").is_file()
    assert (version / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert str(version) in capsys.readouterr().out
    report = json.loads((version / "assets.extra" / "parity.json").read_text())
    assert report["passed"] and report["samples"] == 8  # from the validation split
    assert main(["export", str(run), "--format", "onnx", "--opset", "19"]) == 2
    assert "opset=19" in capsys.readouterr().err
    assert main(["export", str(run / "nowhere")]) == 2
    assert "no model.keras" in capsys.readouterr().err


@pytest.mark.slow
def test_quantized_exports_are_gated_on_the_runs_validation_split(run, capsys):
    args = ["export", str(run), "--format", "onnx", "--quantize", "int8"]
    assert main([*args, "--min-agreement", "0", "--max-accuracy-drop", "1"]) == 0
    out = capsys.readouterr().out
    assert "Exported (onnx, int8)" in out and "top-1 agreement" in out  # what the gate measured
    assert "model.int8.onnx.quantization.json" in out
    report = json.loads((run / "export" / "model.int8.onnx.quantization.json").read_text())
    assert report["calibration_samples"] == 8 and report["scored_samples"] == 8  # 16 validation
    assert report["passed"] and (run / "export" / "model.int8.onnx").stat().st_size > 0
    assert main([*args, "--overwrite", "--min-agreement", "1.5"]) == 2
    assert "`min_agreement` must be a number in [0, 1]" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "saved_model", "--quantize", "int8"]) == 2
    assert "`quantize` for format 'saved_model' must be one of (None,)" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "onnx", "--min-agreement", "0.9"]) == 2
    assert "bound a quantized export: pass `quantize` too" in capsys.readouterr().err


def test_resuming_a_finished_run_says_it_is_finished(run, capsys):
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"The run in {run} finished (3 epochs, best epoch" in out and "nothing to resume" in out


def test_resuming_with_another_config_is_refused_naming_the_key(run, capsys):
    config = run.parent.parent / "tiny.yaml"
    args = ["train", str(config), "--set", "stages.0.lr=0.05", "--resume", str(run)]
    assert main(args) == 2
    assert "stages.0.lr: 0.02 -> 0.05" in capsys.readouterr().err


def test_the_same_config_finds_its_unfinished_run_and_only_that(run, tmp_path):
    from kerastl.app.config import to_yaml
    from kerastl.app.run import unfinished_run

    config = load_config(run.parent.parent / "tiny.yaml", ["stages.0.lr=0.02"])
    config = dataclasses.replace(config, output_dir=str(tmp_path))
    for name, finished, lr in (
        ("tiny", False, 0.02),
        ("tiny-2", True, 0.02),
        ("tiny-3", False, 0.5),
    ):
        folder = tmp_path / name / "backup"
        folder.mkdir(parents=True)
        other = load_config(run.parent.parent / "tiny.yaml", [f"stages.0.lr={lr}"])
        (tmp_path / name / "config.yaml").write_text(
            to_yaml(dataclasses.replace(other, output_dir=str(tmp_path)))
        )
        (folder / "state-000001.json").write_text(json.dumps({"finished": finished}))
    assert unfinished_run(config) == str(tmp_path / "tiny")
    (tmp_path / "tiny" / "backup" / "state-000002.json").write_text('{"finished": true}')
    assert unfinished_run(config) is None
