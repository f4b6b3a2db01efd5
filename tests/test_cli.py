"""The `kerastl` command line."""

import os

import pytest
from checks import SKLEARN_IMAGES, image_folder_of

from kerastl.app.cli import main


def test_list_backbones(capsys):
    assert main(["list-backbones", "resnet5*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["resnet50", "resnet50v2"]


def test_list_backbones_no_match_is_an_error(capsys):
    assert main(["list-backbones", "zzz*"]) == 2
    assert "No backbone matches 'zzz*'" in capsys.readouterr().err


def test_describe_prints_the_group_table(capsys):
    assert main(["describe", "mobilenet", "--weights", "none", "--granularity", "fine"]) == 0
    out = capsys.readouterr().out
    assert "block_13" in out and "total" in out and "3,228,864" in out


def test_describe_unknown_name_exits_2_with_the_closest(capsys):
    assert main(["describe", "resnet05"]) == 2
    assert "Closest registered names: ['resnet50'" in capsys.readouterr().err


@pytest.mark.slow
def test_describe_predict_classifies_with_the_offline_weights(capsys):
    image = os.path.join(SKLEARN_IMAGES, "china.jpg")
    assert main(["describe", "efficientnet-lite0", "--predict", image, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "china.jpg  442:" in out


def _command(*args, **env):
    """The installed `kerastl` console script, in a fresh process with the user's logging."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "kerastl"
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environment, **env},
    )


def test_help_answers_without_importing_tensorflow():
    result = _command("train", "--help", PYTHONPROFILEIMPORTTIME="1")
    text = " ".join(result.stdout.split())  # argparse wraps the epilog
    assert result.returncode == 0
    assert "kerastl config --show" in text and "data.{source, validation_source" in text
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines()]
    assert "kerastl.app.cli" in imported and "tensorflow" not in imported


@pytest.mark.slow
def test_commands_print_no_tensorflow_start_up_lines():
    result = _command("list-backbones", "mobilenetv2")
    assert result.returncode == 0 and result.stdout.startswith("mobilenetv2")
    assert result.stderr == ""


def test_config_show_prints_the_resolved_config_that_loads_back(tmp_path, capsys):
    from kerastl.app.config import load_config

    assert main(["config", "--show", "--set", "data.limit=64", "--set", "stages.0.lr=0.1"]) == 0
    (tmp_path / "shown.yaml").write_text(capsys.readouterr().out)
    config = load_config(tmp_path / "shown.yaml")
    assert config.data.limit == 64 and config.stages[0].lr == 0.1
    assert config.data.validation_source is None


@pytest.mark.slow
def test_train_prints_its_own_lines_and_no_tensorflow_or_keras_noise(tmp_path, capsys, monkeypatch):
    """A user's folder with one corrupt image, through the installed command:
    the skipped file is summarised; no C++ log lines, retracing or shuffle warnings."""
    image_folder_of(tmp_path / "train", ["ants", "bees"], 6)
    image_folder_of(tmp_path / "val", ["ants", "bees"], 2, seed=1)
    (tmp_path / "train" / "bees" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    (tmp_path / "run.yaml").write_text(
        f"""
name: bugs
output_dir: {tmp_path / "runs"}
model: {{backbone: efficientnet-lite0, weights: none, image_size: 32}}
data: {{source: "folder:{tmp_path / "train"}", validation_source: "folder:{tmp_path / "val"}",
        batch_size: 4}}
stages: [{{epochs: 1, train: head}}, {{epochs: 1, train: block7}}]
export: false
"""
    )
    result = _command("train", str(tmp_path / "run.yaml"), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kerastl: skipped 1 of 13 records" in result.stdout
    report = (tmp_path / "runs" / "bugs" / "report.md").read_text()
    assert report.count("## Data") == 1  # before: a section per source
    assert f"{tmp_path / 'train'}: kept 12, skipped 1" in report
    assert f"{tmp_path / 'val'}: kept 4, skipped 0" in report
    noise = (  # the lines the issue saw: TF's start-up (twice), device init, Keras warnings
        "absl::InitializeLog",
        "oneDNN custom operations are on",
        "Could not find cuda drivers",
        "failed call to cuInit",
        "Local rendezvous",
        "triggered tf.function retracing",
        "shuffle=True",
    )
    assert not [word for word in noise if word in result.stdout + result.stderr], result.stderr
    # A quantized export reads the folder's validation split again, every file
    # checked: with its progress (before: minutes of silence on a large folder).
    import kerastl.export
    import kerastl.saving
    from kerastl.app.export_run import export_run

    monkeypatch.setattr(kerastl.saving, "load_model", lambda path, compile: None)  # not its claim
    monkeypatch.setattr(kerastl.export, "onnx", lambda model, output, **options: output)
    capsys.readouterr()
    export_run(tmp_path / "runs" / "bugs", "onnx", quantize="int8", verbose=2)
    assert (
        f"kerastl: checking the images in {tmp_path / 'val'}: 4 images in"
        in capsys.readouterr().out
    )
    # `kerastl lr-find` says what train says of the data (before: nothing).
    import types

    import kerastl.training.lr_finder

    found = types.SimpleNamespace(suggestion=1e-3)
    monkeypatch.setattr(kerastl.training.lr_finder, "lr_find", lambda *args, **kwargs: found)
    assert main(["lr-find", str(tmp_path / "run.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"kerastl: skipped 1 of 13 records in {tmp_path / 'train'} (1 x corrupt)\n" in out
    assert "Suggested learning rate for stage 1 (head): 1.00e-03" in out


def test_native_log_lines_are_dropped_and_everything_else_is_kept(capfd):
    import sys

    from kerastl._quiet import native_stderr_silenced

    native = b"I0000 00:00:1795969097.21 2937 port.cc:153] oneDNN custom operations are on.\n"
    litert = (  # the LiteRT converter's and interpreter's notices
        b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, "
        b"output_inference_type: FLOAT32\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    )
    with native_stderr_silenced():
        os.write(2, native + litert)
        sys.stderr.write("a Python warning that matters\n")
    err = capfd.readouterr().err
    assert "a Python warning that matters" in err and "oneDNN" not in err
    assert "fully_quantize" not in err and "XNNPACK" not in err
    with pytest.raises(RuntimeError), native_stderr_silenced():
        os.write(2, native)
        raise RuntimeError("crash")
    assert "oneDNN" in capfd.readouterr().err  # a failure keeps the native diagnostics
    with pytest.raises(FileExistsError), native_stderr_silenced(expected=(FileExistsError,)):
        os.write(2, native)
        raise FileExistsError("an outcome the caller reports")
    assert "oneDNN" not in capfd.readouterr().err


# TF's words (`polymorphic_function.py`), as `kerastl export` of a ConvNeXt printed them.
_RETRACING = (
    "5 out of the last 5 calls to %s triggered tf.function retracing. Tracing is expensive "
    "and the excessive number of tracings could be due to (1) creating @tf.function "
    "repeatedly in a loop, ..."
)


def test_the_command_drops_tf_s_warning_about_keras_s_grouped_convolutions_only():
    """Keras runs a grouped convolution outside a traced function (ConvNeXt's, in
    Grad-CAM or an export's check against Keras) as a new XLA `tf.function` each
    time, and TF warns of retracing: `kerastl train` and `export` printed it for a
    ConvNeXt. A user's own retracing still warns. (TF warns at most twice a process
    for a function, so the test hands the logger TF's words itself.)"""
    import logging

    from kerastl.app import cli

    logger = logging.getLogger("tensorflow")
    installed = list(logger.filters)  # an in-process `main()` before this test put it there
    for kept in installed:
        logger.removeFilter(kept)

    def shown(function: str) -> bool:
        record = logger.makeRecord(
            "tensorflow", logging.WARNING, __file__, 0, _RETRACING % function, None, None
        )
        return bool(logger.filter(record))

    try:
        assert shown("<function conv.<locals>._conv_xla at 0x7f208cc17920>")
        cli._start_tensorflow()
        assert not shown("<function conv.<locals>._conv_xla at 0x7f208cc17920>")
        assert shown("<function train_step at 0x7f208cc17920>")
    finally:
        for added in list(logger.filters):
            logger.removeFilter(added)
        for kept in installed:
            logger.addFilter(kept)


@pytest.mark.parametrize("outcome", ["refused", "done"])
@pytest.mark.parametrize("command", ["explain", "rank", "lr-find", "describe"])
def test_tensorflow_s_native_lines_are_dropped_on_a_refusal_and_a_result(
    command, outcome, capfd, monkeypatch
):
    """`kerastl explain` refusing a BMP TF would misread printed TF's native
    "failed call to cuInit" line above its error (its model had started TF's
    devices), and `kerastl lr-find` and `kerastl describe` printed it on success."""
    import sys
    import types

    import kerastl.app.explain
    import kerastl.app.rank
    import kerastl.app.run
    import kerastl.backbones

    results = {
        "explain": ["p.png: cat 0.90, dog 0.10 -> run/explain/p.png"],
        "rank": ([], "runs/rank/ranking.csv"),
        "lr-find": (types.SimpleNamespace(suggestion=3e-3), "runs/lr-find/lr_find.png"),
        "describe": "a built backbone",
    }

    def starting_devices(*args, **kwargs):
        os.write(2, b"E0000 00:00:1796658999.57 25356 cuda_platform.cc:52] failed call to cuInit\n")
        if outcome == "refused":
            raise ValueError("Cannot decode image 'p.bmp' right: unsupported BMP")
        return results[command]

    monkeypatch.setattr(kerastl.app.explain, "explain", starting_devices)
    monkeypatch.setattr(kerastl.app.rank, "rank", starting_devices)
    monkeypatch.setattr(kerastl.app.run, "lr_find_for_config", starting_devices)
    monkeypatch.setattr(kerastl.backbones, "create_backbone", starting_devices)
    monkeypatch.setattr(sys.modules["kerastl.describe"], "describe", lambda model, _: model)
    argv = {
        "explain": ["explain", "run", "p.bmp"],
        "rank": ["rank", "--candidates", "a,b"],
        "lr-find": ["lr-find"],
        "describe": ["describe", "efficientnet-lite0", "--weights", "none"],
    }
    assert main(argv[command]) == (2 if outcome == "refused" else 0)
    out, err = capfd.readouterr()
    assert "cuInit" not in err
    if outcome == "refused":
        assert "kerastl: error: Cannot decode image 'p.bmp' right" in err
    else:
        printed = {
            "explain": "p.png: cat 0.90",
            "rank": "Ranking:",
            "lr-find": "3.00e-03",
            "describe": "a built backbone",
        }
        assert printed[command] in out
