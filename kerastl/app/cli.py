"""The `kerastl` command: `train`, `lr-find`, `rank`, `export`, `explain`,
`list-backbones`, `describe`, `config`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kerastl", description="Transfer learning for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)

    _add_backbone_commands(commands)
    _add_run_commands(commands)
    _add_export_command(commands)
    explain = commands.add_parser(
        "explain", help="classify images with a run's model and show where it looked (Grad-CAM)"
    )
    explain.add_argument("run_dir", help="a run directory written by `kerastl train`")
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    explain.add_argument("--output", help="where the overlays go (default: RUN_DIR/explain/)")
    explain.add_argument("--group", help="the layer group explained (default: the last spatial)")
    explain.add_argument("--top", type=int, default=3, help="classes listed per image")
    return parser


def _add_backbone_commands(commands) -> None:
    listing = commands.add_parser("list-backbones", help="list registered backbones")
    listing.add_argument(
        "pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'efficientnet*'"
    )
    listing.add_argument("--source", choices=("applications", "keras_hub"))

    describe = commands.add_parser("describe", help="show a backbone's layer groups")
    describe.add_argument("name", help="a registry name (see list-backbones)")
    describe.add_argument(
        "--weights",
        default="default",
        help="'default', 'none', 'imagenet', a preset handle, an asset, or a local file/dir",
    )
    describe.add_argument("--granularity", choices=("coarse", "fine"), default="coarse")
    describe.add_argument(
        "--predict",
        nargs="+",
        metavar="IMAGE",
        help="classify images with the pretrained ImageNet classifier (include_top)",
    )
    describe.add_argument("--top", type=int, default=5, help="classes to show with --predict")


def _add_run_commands(commands) -> None:

    keys = (
        "config keys (YAML sections, or --set section.key=value): name, output_dir, "
        "model.{backbone, weights, image_size, sequence_length, dropout, pooling}, "
        "data.{source, validation_source, test_source, class_names, limit, batch_size, "
        "augment, ...}, train.{strategy, precision, metrics, monitor, ...}, stages (a list of "
        "{epochs, train, lr, ...}), transfer_report, export. `kerastl config --show` prints "
        "every key with its default; `kerastl config --show FILE --set ...` the resolved config."
    )
    for name, text in (
        ("train", "fine-tune as a YAML config says; writes a run directory"),
        ("lr-find", "learning-rate range test for the config's first stage"),
    ):
        command = commands.add_parser(name, help=text, description=text, epilog=keys)
        command.add_argument("config", nargs="?", help="a YAML config (default: built-in defaults)")
        command.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set stages.1.lr=1e-4 (repeatable)",
        )
        command.add_argument("--quiet", action="store_true", help="no per-epoch progress")
        if name == "train":
            command.add_argument(
                "--resume",
                metavar="RUN_DIR",
                help="continue the unfinished run in RUN_DIR (its config.yaml; a CONFIG or "
                "--set given too must match it)",
            )

    rank = commands.add_parser(
        "rank",
        help="rank candidate backbones on a config's data by their frozen features (LogME)",
        epilog="Writes RUN_DIR/ranking.csv under the config's output_dir, named NAME-rank.",
    )
    rank.add_argument("config", nargs="?", help="a YAML config (its data, sizes, augmentation)")
    rank.add_argument(
        "--candidates",
        required=True,
        help="comma-separated registry names, NAME@WEIGHTS for other weights "
        "(e.g. efficientnet-lite0,efficientnet-lite2,efficientnet-lite0@none)",
    )
    rank.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    rank.add_argument(
        "--own-sizes",
        action="store_true",
        help="each image candidate at its own input size (images read at model.image_size)",
    )
    rank.add_argument("--quiet", action="store_true", help="no line per candidate")

    config = commands.add_parser(
        "config", help="print the configuration (defaults, or a file with overrides) as YAML"
    )
    config.add_argument("config", nargs="?", help="a YAML config (default: built-in defaults)")
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    config.add_argument("--show", action="store_true", help="print it (the only action)")


def _add_export_command(commands) -> None:

    export = commands.add_parser(
        "export", help="export a run's model (TF Serving bundle, SavedModel, ONNX, LiteRT)"
    )
    export.add_argument("run_dir", help="a run directory written by `kerastl train`")
    export.add_argument(
        "--format", choices=("bundle", "saved_model", "onnx", "litert"), default="bundle"
    )
    export.add_argument("--output", help="where to write (default: RUN_DIR/export/...)")
    export.add_argument("--name", help="served model name for a bundle (default: the run's)")
    export.add_argument(
        "--signatures",
        help="comma-separated, first is serving_default (e.g. image_bytes,image_tensor)",
    )
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (13-18)")
    export.add_argument(
        "--quantize",
        choices=("int8", "float16"),
        help="onnx: int8; litert: int8 or float16; gated on the run's validation split",
    )
    export.add_argument(
        "--max-accuracy-drop", type=float, help="the quantization gate's bound (default 0.01)"
    )
    export.add_argument(
        "--min-agreement", type=float, help="the quantization gate's bound (default 0.98)"
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `kerastl` command line.

    Args:
        argv: arguments without the program name; default `sys.argv[1:]`.

    Returns:
        The exit status: 0 on success, 2 on a usage or input error.

    Example:
        >>> main(["describe", "efficientnet-lite0"])
        0
    """
    args = _parser().parse_args(argv)
    _start_tensorflow()
    try:
        if args.command in ("train", "lr-find"):
            return _train(args) if args.command == "train" else _lr_find(args)
        if args.command == "export":
            return _export(args)
        if args.command == "explain":
            return _explain(args)
        if args.command == "rank":
            return _rank(args)
        if args.command == "config":
            return _config(args)
        if args.command == "list-backbones":
            return _list_backbones(args)
        return _describe(args)
    except _refusals() as error:
        print(f"kerastl: error: {error}", file=sys.stderr)
        return 2


def _refusals() -> tuple[type[Exception], ...]:
    """What a command refuses its input with: reported as one `kerastl: error:`
    line, exit 2. An outcome, not a crash, so TF's C++ lines are dropped with it."""
    from kerastl.backbones import CheckpointError, HubUnavailableError
    from kerastl.export import (
        ParityError,
        QuantizationError,
        UnsupportedOpsError,
        UnsupportedServingOpsError,
    )

    return (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        HubUnavailableError,
        CheckpointError,
        ParityError,
        QuantizationError,
        UnsupportedOpsError,
        UnsupportedServingOpsError,
    )


def _tensorflow_quiet():
    """A command's TF work with TF's C++ lines (device start-up, kernel notices)
    held back: dropped when it ends or refuses its input (`_refusals`), shown
    after a crash."""
    from kerastl._quiet import native_stderr_silenced

    return native_stderr_silenced(expected=_refusals())


def _start_tensorflow() -> None:
    """Imports TensorFlow and kerastl with TF's C++ start-up lines held back
    (they ignore `TF_CPP_MIN_LOG_LEVEL`); later C++ warnings stay hidden, errors
    shown, and TF's warning about Keras's own retracing is dropped."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kerastl._quiet import drop_keras_conv_retracing_warnings, native_stderr_silenced

    with native_stderr_silenced():
        import tensorflow  # noqa: F401

        import kerastl

        kerastl._import_all()
    drop_keras_conv_retracing_warnings()


def _explain(args) -> int:
    from kerastl.app.explain import explain

    with _tensorflow_quiet():
        lines = explain(
            args.run_dir, args.images, output=args.output, group=args.group, top=args.top
        )
    for line in lines:
        print(line)
    return 0


def _rank(args) -> int:
    from kerastl.app.config import load_config
    from kerastl.app.rank import format_table, parse_candidates, rank

    candidates = parse_candidates(args.candidates)
    config = load_config(args.config, args.set)
    with _tensorflow_quiet():
        rows, path = rank(
            config, candidates, verbose=0 if args.quiet else "auto", own_sizes=args.own_sizes
        )
    print(format_table(rows))
    print(f"Ranking: {path}")
    return 0


def _config(args) -> int:
    from kerastl.app.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.set)), end="")
    return 0


def _train(args) -> int:
    from kerastl.app.config import load_config
    from kerastl.app.run import train
    from kerastl.training.staged_backup import BackupError, RunFinished, RunInterrupted

    if args.resume and args.config is None and not args.set:
        config = load_config(os.path.join(args.resume, "config.yaml"))
    else:
        config = load_config(args.config, args.set)
    try:
        train(config, verbose=0 if args.quiet else "auto", resume=args.resume)
    except RunFinished as finished:
        print(f"kerastl: {finished}")
        return 0
    except RunInterrupted as stopped:
        print(f"kerastl: {stopped}", file=sys.stderr)
        return 130 if "SIGINT" in str(stopped) else 143
    except BackupError as error:
        print(f"kerastl: error: {error}", file=sys.stderr)
        return 2
    return 0


def _lr_find(args) -> int:
    from kerastl.app.config import load_config
    from kerastl.app.run import lr_find_for_config

    config = load_config(args.config, args.set)
    with _tensorflow_quiet():
        result, plot = lr_find_for_config(config)
    stage = config.stages[0]
    print(f"Suggested learning rate for stage 1 ({stage.train}): {result.suggestion:.2e}")
    print(f"Curve: {plot}")
    return 0


def _export(args) -> int:
    from kerastl.app.export_run import export_run
    from kerastl.export.quantization import QuantizationReport, report_path

    signatures = tuple(args.signatures.split(",")) if args.signatures else None
    with _tensorflow_quiet():
        path = export_run(
            args.run_dir,
            args.format,
            output=args.output,
            name=args.name,
            signatures=signatures,
            opset=args.opset,
            overwrite=args.overwrite,
            quantize=args.quantize,
            max_accuracy_drop=args.max_accuracy_drop,
            min_agreement=args.min_agreement,
        )
    kind = args.format if args.quantize is None else f"{args.format}, {args.quantize}"
    print(f"Exported ({kind}): {path}")
    if args.quantize is not None:
        report = report_path(path)
        print(f"{QuantizationReport.read(report).summary()}\n  (measured: {report})")
    return 0


def _list_backbones(args) -> int:
    from kerastl.backbones import get_spec, list_backbones

    names = list_backbones(args.pattern, source=args.source)
    if not names:
        print(f"No backbone matches {args.pattern!r}.", file=sys.stderr)
        return 2
    width = max(len(name) for name in names)
    for name in names:
        spec = get_spec(name)
        print(f"{name.ljust(width)}  {spec.source:<12}  {spec.modality:<5}  {spec.description}")
    return 0


def _describe(args) -> int:
    from kerastl.backbones import create_backbone, get_spec
    from kerastl.describe import describe

    if args.top < 1:
        raise ValueError(f"--top must be at least 1. Received: --top {args.top}.")
    spec = get_spec(args.name)
    weights = None if args.weights.lower() == "none" else args.weights
    print(f"Building {spec.name} (weights={weights!r}) ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with _tensorflow_quiet():
        model = create_backbone(spec.name, weights=weights, include_top=bool(args.predict))
    print(f"Built in {time.perf_counter() - started:.1f}s.", file=sys.stderr)
    print(describe(model, args.granularity))
    if args.predict:
        _predict(model, spec, args.predict, args.top)
    return 0


def _predict(model, spec, paths, top) -> None:
    import numpy as np

    from kerastl.preprocessing import load_image

    preprocess = spec.preprocessing.layer()
    images = np.stack([load_image(path, spec.input_size) for path in paths])
    logits = np.asarray(model.predict(preprocess(images), verbose=0))
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    print(f"\nImageNet top-{top} (class id: probability):")
    for path, row in zip(paths, probabilities, strict=True):
        best = np.argsort(-row)[:top]
        ranked = ", ".join(f"{int(i)}: {row[i]:.3f}" for i in best)
        print(f"  {os.path.basename(path)}  {ranked}")


if __name__ == "__main__":
    sys.exit(main())
