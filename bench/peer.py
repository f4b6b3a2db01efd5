"""kerastl side by side with the PyTorch route, on the recipes' own work.

Text: all-MiniLM-L6-v2 on Rotten Tomatoes, the text recipe run by `kerastl
train`'s code vs `transformers.Trainer` (dynamic padding, AdamW with the
recipe's rate, warm-up, weight decay, epochs, batch size and seed).
Image: EfficientNet-Lite0 on elpv, the image recipe vs the same pretrained
weights in timm (`tf_efficientnet_lite0`) trained by a plain PyTorch loop
with the recipe's stages. Both sides get the same examples: this script
reads the recipe's data once (its training / validation / test splits) and
hands the PyTorch side a copy. The two runs of a task alternate which goes
first; each runs in a child process of its own (peak RSS from `wait4`).

One row per side: wall time of training (to the end of the last epoch),
training samples per second, best validation score (the recipe's monitor),
test accuracy of the best epoch, peak RSS, and inference latency at batch 1
and 32: kerastl's ONNX export in onnxruntime vs PyTorch eager and
`torch.compile`. Then the ratios kerastl / PyTorch: training time, and
time to the same accuracy (from the start of training to the first
validation scoring the lower of the two best epochs' scores). Validations
happen at epoch ends, and with `--evaluate-every STEPS` (text) also every
STEPS steps inside an epoch on both sides, off the clock.

Needs `.venv-peer/` (`make bench-peer` makes it: torch, torchvision, transformers, timm).

Usage:
    .venv/bin/python bench/peer.py text image --evaluate-every 40
    .venv/bin/python bench/peer.py image --set data.limit=400   # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _child import run_child
from _timing import machine
from _variants import recipe_yaml

HERE = os.path.dirname(os.path.abspath(__file__))
PEER_PYTHON = os.path.join(HERE, "..", ".venv-peer", "bin", "python")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tasks", nargs="+", choices=["text", "image"])
    parser.add_argument("--set", action="append", default=[], help="recipe override, both sides")
    parser.add_argument("--peer-python", default=PEER_PYTHON)
    parser.add_argument(
        "--evaluate-every",
        type=int,
        default=0,
        metavar="STEPS",
        help="text: also score the validation data every STEPS training steps, both sides, "
        "off the clock (time to the same accuracy inside an epoch); 0: epoch ends only",
    )
    args = parser.parse_args()
    if args.evaluate_every < 0:
        sys.exit(f"--evaluate-every takes a number of steps >= 0; received {args.evaluate_every}.")
    if not os.path.exists(args.peer_python):
        sys.exit(f"No PyTorch environment at {args.peer_python}: run `make bench-peer`.")
    output = tempfile.mkdtemp(prefix="kerastl-peer-")
    print(f"runs in {output}; machine: {machine()}", flush=True)
    rows = []
    for turn, task in enumerate(args.tasks):
        data_path, peer_weights, settings = _prepare(task, args.set, output)
        settings["evaluate_every"] = args.evaluate_every if task == "text" else 0
        order = ["kerastl", "PyTorch"] if turn % 2 == 0 else ["PyTorch", "kerastl"]
        for side in order:
            result_path = os.path.join(output, f"{task}-{side}.json")
            if side == "kerastl":
                command = [sys.executable, __file__, "--child", task, output, result_path]
                command += [str(settings["evaluate_every"]), *args.set]
            else:
                script = os.path.join(HERE, "_peer_torch.py")
                command = [args.peer_python, script, task, data_path, peer_weights, result_path]
                command.append(json.dumps(settings))
            start = time.perf_counter()
            row, peak_gb, status = run_child(command, result_path)
            if row is None:
                print(f"{task} {side}: failed (exit status {status})", flush=True)
                continue
            row.update(task=task, side=side, process_rss_gb=peak_gb)
            row["last_stage_samples"] = (
                settings["train_examples"] * settings["stages"][-1]["epochs"]
            )
            row["process_seconds"] = time.perf_counter() - start
            rows.append(row)
            print(json.dumps(row), flush=True)
    _print_table(rows)


def _prepare(task: str, overrides: list[str], output: str) -> tuple[str, str, dict]:
    """Exports the recipe's splits for the PyTorch side; returns the data file,
    the pretrained weights it starts from, and the recipe's settings."""
    import numpy as np

    from kerastl.app.config import load_config
    from kerastl.app.data import load_data
    from kerastl.backbones.assets import asset_path, cache_dir
    from kerastl.backbones.efficientnet_lite import convert_to_preset

    config = load_config(recipe_yaml(task), [f"output_dir={output}", *overrides])
    data = load_data(config)
    arrays = {}
    for split in ("train", "validation", "test"):
        inputs, labels = [], []
        for x, y, *_ in getattr(data, split):
            labels.append(np.asarray(y))
            if task == "image":
                inputs.append(np.asarray(x))
            else:  # the recipe's own token ids, padding dropped: the same tokens both sides
                mask = np.asarray(x["padding_mask"])
                inputs += [i[m] for i, m in zip(np.asarray(x["token_ids"]), mask, strict=True)]
        arrays[f"{split}_y"] = np.concatenate(labels).astype("int64")
        if task == "image":
            arrays[f"{split}_x"] = np.concatenate(inputs)
        else:
            arrays[f"{split}_ids"] = np.concatenate(inputs).astype("int64")
            arrays[f"{split}_offsets"] = np.cumsum([0, *map(len, inputs)])
    data_path = os.path.join(output, f"{task}.npz")
    np.savez(data_path, **arrays)
    stages = [
        {
            "epochs": stage.epochs,
            "lr": stage.lr,
            "top": stage.train != "head",
            "lr_mult": stage.lr_mult,
            "warmup": stage.warmup or 0.0,
            "schedule": stage.schedule,
            "weight_decay": stage.weight_decay,
        }
        for stage in config.stages
    ]
    settings = {
        "train_examples": len(arrays["train_y"]),
        "seed": config.train.seed,
        "batch_size": config.data.batch_size,
        "dropout": config.model.dropout,
        "stages": stages,
    }
    if task == "text":
        last = stages[-1]
        settings.update(
            sequence_length=config.model.sequence_length,
            lr=last["lr"],
            epochs=last["epochs"],
            warmup=last["warmup"],
            weight_decay=last["weight_decay"] or 0.0,
        )
        return data_path, asset_path("all-minilm-l6-v2"), settings
    preset = convert_to_preset(asset_path("efficientnet-lite0"), cache_dir())
    return data_path, preset, settings


def child(task: str, output: str, result_path: str, evaluate_every: int, overrides) -> None:
    """The kerastl side: the recipe through `kerastl train`'s code, then its
    ONNX export timed in onnxruntime."""
    import kerastl
    from kerastl.app.config import load_config
    from kerastl.app.run import train

    config = load_config(recipe_yaml(task), [f"output_dir={output}", "export=false", *overrides])
    clock = _TrainingClock(config.train.monitor, evaluate_every)
    start = time.perf_counter()
    result = train(config, verbose=0)
    seconds = time.perf_counter() - start
    training_seconds = result.seconds - clock.off_clock
    fit_start = clock.points[-1][0] - start - training_seconds  # data loading before the stages
    last = result.stages[-1]
    training_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    onnx_path = kerastl.export.onnx(result.model, os.path.join(output, f"{task}.onnx"))
    row = {
        "train_seconds": training_seconds,
        "run_seconds": seconds,
        "last_stage_seconds": last["seconds"] - clock.off_clock,
        "off_clock_seconds": clock.off_clock,
        "rss_gb": training_rss,
        "best": result.best[0],
        "curve": [(at - start - fit_start, value) for at, value in clock.points],
        "test": result.test.plain.accuracy,
        "latency": _onnx_latency(str(onnx_path), task, output),
        "versions": {"keras": __import__("keras").__version__, "kerastl": kerastl.__version__},
    }
    with open(result_path, "w") as file:
        json.dump(row, file)


class _TrainingClock:
    """Clocks the run's validation scores (kerastl's run record has no clock).

    Every epoch end records `(clock, monitored value)` in `points`; with
    `evaluate_every` > 0, so does a validation pass every that many steps
    inside an epoch (the recipe's validation data, the full model), whose
    time is kept off the clock (`off_clock`, subtracted from later points).
    Such a pass leaves the training untouched (dropout draws from the
    model's seed state, which inference does not advance) but resets the
    compiled metrics, so the history's training accuracy covers only the
    steps after the last one.
    """

    def __init__(self, monitor: str, evaluate_every: int):
        import kerastl.app.run as run
        from kerastl.training.run_directory import RunRecorder

        self.points: list[tuple[float, float]] = []
        self.off_clock = 0.0
        clock = self
        record = RunRecorder.on_epoch_end

        def epoch_end(recorder, epoch, logs=None):
            record(recorder, epoch, logs)  # the best weights kept: part of the epoch
            clock.points.append((time.perf_counter() - clock.off_clock, float(logs[monitor])))

        RunRecorder.on_epoch_end = epoch_end
        if not evaluate_every:
            return
        load_data = run.load_data
        data = []
        run.load_data = lambda config, spec=None: data.append(load_data(config, spec)) or data[-1]

        def batch_end(recorder, batch, logs=None):
            steps = recorder.params.get("steps")
            if (batch + 1) % evaluate_every or (steps and batch + 1 >= steps):
                return  # the epoch's end scores the last step
            paused = time.perf_counter()
            scores = recorder.full_model.evaluate(data[0].validation, verbose=0, return_dict=True)
            value = float(scores[monitor.removeprefix("val_")])
            clock.points.append((paused - clock.off_clock, value))
            clock.off_clock += time.perf_counter() - paused

        RunRecorder.on_train_batch_end = batch_end


def _onnx_latency(path: str, task: str, output: str) -> dict:
    """Median ms per onnxruntime call at batch 1 and 32, on the inputs the
    PyTorch side times: the first training reviews (padded to the longest of
    the batch), or random pixels for images."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    reviews = np.load(os.path.join(output, "text.npz")) if task == "text" else None
    results = {}
    for size in (1, 32):
        if task == "text":
            feed = _first_reviews(session, reviews, size)
        else:
            (spec,) = session.get_inputs()
            shape = [size, *spec.shape[1:]]
            feed = {spec.name: np.random.default_rng(0).uniform(0, 255, shape).astype("float32")}
        for _ in range(3):
            session.run(None, feed)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        results[f"onnx_{size}"] = 1000 * float(np.median(times))
    return results


def _first_reviews(session, data, size: int) -> dict:
    """The first `size` training reviews of `data` (the exported npz) as the
    ONNX token inputs, padded to the longest of them (the batch
    `_peer_torch.py` times)."""
    import numpy as np

    ids, offsets = data["train_ids"], data["train_offsets"][: size + 1]
    width = int(np.diff(offsets).max())
    tokens = np.zeros((size, width), np.int64)
    mask = np.zeros((size, width), bool)
    for row, (a, b) in enumerate(itertools.pairwise(offsets)):
        tokens[row, : b - a], mask[row, : b - a] = ids[a:b], True
    feed = {}
    for spec in session.get_inputs():  # token ids, padding mask, segment ids
        dtype = np.dtype(spec.type[len("tensor(") : -1])
        if "mask" in spec.name:
            feed[spec.name] = mask.astype(dtype)
        elif "segment" in spec.name:
            feed[spec.name] = np.zeros_like(tokens, dtype)
        else:
            feed[spec.name] = tokens.astype(dtype)
    return feed


def _print_table(rows: list[dict]) -> None:
    print()
    print(
        "| task | side | train s (all stages) | last stage samples/s | best val | test acc "
        "| peak RSS GB (training) | batch 1 ms | batch 32 ms |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for row in rows:
        latency = row["latency"]
        one = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in latency.items() if k.endswith("_1"))
        many = ", ".join(f"{k[:-3]} {v:.1f}" for k, v in latency.items() if k.endswith("_32"))
        print(
            f"| {row['task']} | {row['side']} | {row['train_seconds']:.0f} "
            f"| {row['last_stage_samples'] / row['last_stage_seconds']:.1f} | {row['best']:.4f} "
            f"| {row['test']:.4f} | {row['rss_gb']:.2f} | {one} | {many} |"
        )
    by = {(row["task"], row["side"]): row for row in rows}
    for task in dict.fromkeys(row["task"] for row in rows):
        ours, theirs = by.get((task, "kerastl")), by.get((task, "PyTorch"))
        if ours and theirs:
            ratio = ours["train_seconds"] / theirs["train_seconds"]
            gap = ours["test"] - theirs["test"]
            print(f"{task}: kerastl / PyTorch training time {ratio:.2f}, test accuracy {gap:+.4f}")
            target = min(ours["best"], theirs["best"])
            ours_s = _seconds_to(target, ours["curve"])
            theirs_s = _seconds_to(target, theirs["curve"])
            print(
                f"{task}: time to validation {target:.4f} (the lower best): "
                f"kerastl {ours_s:.0f} s, PyTorch {theirs_s:.0f} s, ratio {ours_s / theirs_s:.2f}"
            )


def _seconds_to(target: float, curve: list) -> float:
    """Seconds of training until the first validation scoring `target`."""
    return next(seconds for seconds, value in curve if value >= target)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6:])
    else:
        main()
