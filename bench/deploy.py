"""Every deployment format of a trained run, side by side: size, latency, test accuracy.

For a run directory (default: the demo's `runs/elpv-lite0`, from `make demo`,
and the text recipe's `runs/rotten-tomatoes-minilm`, from
`python recipes/text_classification.py`), exports the run's model as a
SavedModel (its tensor signature), ONNX float, ONNX int8, and for image
models LiteRT float32, float16 and int8; quantized files are calibrated on
the run's validation split (the gate's bounds opened so that every file is
measured; the gate's verdict at its default bounds is its own column). Then
each file's size, median latency at batch 1 and 32 (each format timed in
its own block of calls: interleaved, onnxruntime's spinning worker threads
slow whichever runtime comes next), and
accuracy on the whole test split, read once. Text batches are padded to
their own longest review, as a server would send them.

For the text model, also Keras's own `model.quantize("int8")` as a SavedModel
(kerastl does not offer it: see the README), and the tokenizers of the `text` signature: strings per
second of the core-op WordPiece (`kerastl/export/core_tokenizer.py`) and of
KerasHub's TF-Text preprocessor, interleaved, on the test reviews.

Usage:
    .venv/bin/python bench/deploy.py [RUN_DIR ...] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from _files import size_mb
from _timing import interleaved_times, machine

import kerastl
import kerastl.export as kx
from kerastl.app.config import load_config
from kerastl.app.data import load_data
from kerastl.export.litert_runtime import LiteRTRunner
from kerastl.export.onnx_export import onnx_probabilities
from kerastl.export.onnx_runtime import onnx_session
from kerastl.export.quantization import labeled_samples
from kerastl.export.signatures import is_text_model, tensor_signature

DEFAULT_RUNS = ("runs/elpv-lite0", "runs/rotten-tomatoes-minilm")
OPEN = {"max_accuracy_drop": 1.0, "min_agreement": 0.0}  # measure every file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=DEFAULT_RUNS)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for run_dir in args.runs:
        if not os.path.isfile(os.path.join(run_dir, "model.keras")):
            print(f"\n{run_dir}: no model.keras (run `make demo` or the text recipe first)")
            continue
        bench_run(run_dir, args.rounds)


def bench_run(run_dir: str, rounds: int) -> None:
    config = load_config(os.path.join(run_dir, "config.yaml"))
    data = load_data(config)
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"), compile=False)
    text = is_text_model(model)
    validation = labeled_samples(model, data.validation)
    test_inputs, test_labels = labeled_samples(model, data.test)
    print(f"\n{run_dir} ({config.model.backbone}): validation {_count(validation[0])}, "
          f"test {len(test_labels)} examples")  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        files = _export_all(run_dir, model, directory, validation, text)
        predictors = {name: _predictor(path, model) for name, (path, _) in files.items()}
        accuracies = {
            name: float(np.mean(_batched(predict, test_inputs).argmax(-1) == test_labels))
            for name, predict in predictors.items()
        }
        latency = {
            size: {
                name: _median_ms(predict, _first(test_inputs, size), rounds)
                for name, predict in predictors.items()
            }
            for size in (1, 32)
        }
        keras_accuracy = float(
            np.mean(_batched(_keras(model), test_inputs).argmax(-1) == test_labels)
        )
        print(f"Keras test accuracy {keras_accuracy:.4f}")
        print("| format | size MB | batch 1 ms | batch 32 ms | test accuracy | gate (defaults) |")
        print("| --- | ---: | ---: | ---: | ---: | --- |")
        for name, (path, verdict) in files.items():
            print(
                f"| {name} | {size_mb(path):.1f} | {latency[1][name]:.2f} | "
                f"{latency[32][name]:.1f} | {accuracies[name]:.4f} | {verdict} |"
            )
        for name, (one, many) in _torch_reference(test_inputs, text, directory).items():
            print(f"| {name} (reference) | - | {one:.2f} | {many:.1f} | - | - |")
        if text:
            _tokenizer_throughput(model, rounds)


def _export_all(run_dir, model, directory, validation, text) -> dict[str, tuple[str, str]]:
    """Format name → (path, the gate's verdict at its default bounds)."""
    samples = _first(validation[0], 8)
    files = {}
    path = os.path.join(directory, "saved_model")
    kx.saved_model(model, path, tensor_signature(model), samples=samples, verbose=0)
    files["SavedModel"] = (path, "-")
    path = kx.onnx(model, os.path.join(directory, "model.onnx"), samples=samples, verbose=0)
    files["ONNX float"] = (path, "-")
    path = kx.onnx(
        model, os.path.join(directory, "model.int8.onnx"), samples=validation, quantize="int8",
        verbose=0, **OPEN,
    )  # fmt: skip
    files["ONNX int8"] = (path, _verdict(path))
    if text:
        files["SavedModel, Keras int8"] = (_keras_int8_saved_model(run_dir, directory), "-")
        return files
    path = kx.litert(model, os.path.join(directory, "model.tflite"), samples=samples, verbose=0)
    files["LiteRT float32"] = (path, "-")
    for mode in ("float16", "int8"):
        path = os.path.join(directory, f"model.{mode}.tflite")
        kx.litert(model, path, samples=validation, quantize=mode, verbose=0, **OPEN)
        files[f"LiteRT {mode}"] = (path, _verdict(path))
    return files


def _torch_reference(test_inputs, text: bool, directory: str) -> dict[str, tuple]:
    """PyTorch eager and `torch.compile` latency on the same batches, from
    `.venv-peer` (`make bench-peer` installs it); nothing when it is absent."""
    from kerastl.backbones.assets import asset_path

    python = os.path.join(".venv-peer", "bin", "python")
    if not os.path.exists(python):
        print("(no .venv-peer: no PyTorch reference rows; `make bench-peer` installs it)")
        return {}
    batches = {}
    for size in (1, 32):
        batch = _first(test_inputs, size)
        if text:
            batches[f"token_ids_{size}"] = batch["token_ids"]
            batches[f"padding_mask_{size}"] = batch["padding_mask"]
        else:
            batches[f"images_{size}"] = batch
    path, result = os.path.join(directory, "batches.npz"), os.path.join(directory, "torch.json")
    np.savez(path, **batches)
    script = os.path.join(os.path.dirname(__file__), "_peer_torch.py")
    model_dir = asset_path("all-minilm-l6-v2") if text else "-"
    subprocess.run([python, script, "latency", path, model_dir, result, "{}"], check=True)
    with open(result) as file:
        measured = json.load(file)["latency"]
    return {
        f"PyTorch {kind}": (measured[f"{kind}_1"], measured[f"{kind}_32"])
        for kind in ("eager", "compile")
        if f"{kind}_1" in measured and f"{kind}_32" in measured
    }


def _keras_int8_saved_model(run_dir: str, directory: str) -> str:
    """Keras's own `model.quantize("int8")` (its Dense and EinsumDense layers), as a
    SavedModel's `token_ids` signature: measured, not offered by kerastl."""
    from kerastl.export.keras_export_fixes import track_model
    from kerastl.export.signatures import TOKEN_IDS, serving_function

    quantized = keras.models.load_model(os.path.join(run_dir, "model.keras"), compile=False)
    quantized.preprocessor(tf.constant([""]))  # quantize() walks every layer: built ones only
    quantized.quantize("int8")
    archive = keras.export.ExportArchive()
    track_model(archive, quantized)  # each weight once, as kerastl's own SavedModels
    archive.add_endpoint(TOKEN_IDS, serving_function(quantized, TOKEN_IDS, numeric_only=True))
    path = os.path.join(directory, "keras_int8")
    archive.write_out(path, verbose=False)
    return path


def _verdict(path: str) -> str:
    """What the gate says at its default bounds, from the measurements it wrote."""
    from kerastl.export.quantization import (
        DEFAULT_MAX_ACCURACY_DROP,
        DEFAULT_MIN_AGREEMENT,
        QuantizationReport,
        report_path,
    )

    report = QuantizationReport.read(
        report_path(path), max_accuracy_drop=DEFAULT_MAX_ACCURACY_DROP,
        min_agreement=DEFAULT_MIN_AGREEMENT,
    )  # fmt: skip
    agreement = f"agreement {report.agreement:.3f} on {report.scored_samples} validation"
    return f"passes ({agreement})" if report.passed else f"refused ({agreement})"


def _predictor(path: str, model):
    if path.endswith(".onnx"):
        session = onnx_session(path)
        return lambda inputs: onnx_probabilities(session, inputs)
    if path.endswith(".tflite"):
        runner = LiteRTRunner(path)
        return lambda inputs: runner(inputs)["probabilities"]
    function = tf.saved_model.load(path).signatures[tensor_signature(model)]
    if is_text_model(model):
        return lambda inputs: function(**{k: tf.constant(v, tf.int32) for k, v in inputs.items()})[
            "probabilities"
        ].numpy()
    return lambda images: function(images=tf.constant(images))["probabilities"].numpy()


def _median_ms(predict, inputs, rounds: int) -> float:
    """Median ms per call, after a pause and 10 warm-up calls. Each format is timed
    in its own block: interleaved, onnxruntime's worker threads still spin
    after a call and slow whichever runtime runs next (LiteRT float32 right
    after ONNX int8 measured 1.61 ms at batch 1, 1.0 ms on its own)."""
    time.sleep(1.0)  # the previous block's spinning threads go idle
    for _ in range(10):
        predict(inputs)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        predict(inputs)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _keras(model):
    def predict(inputs):
        logits = keras.tree.flatten(model(inputs, training=False))[0]
        return tf.nn.softmax(logits).numpy()

    return predict


def _batched(predict, inputs, size: int = 32) -> np.ndarray:
    return np.concatenate(
        [predict(_slice(inputs, start, start + size)) for start in range(0, _count(inputs), size)]
    )


def _first(inputs, size: int):
    return _slice(inputs, 0, size)


def _slice(inputs, start: int, stop: int):
    """Rows `start:stop`; token arrays cut to the longest of those rows."""
    if not isinstance(inputs, dict):
        return inputs[start:stop]
    rows = {name: value[start:stop] for name, value in inputs.items()}
    length = max(int(rows["padding_mask"].sum(axis=1).max()), 1)
    return {name: value[:, :length] for name, value in rows.items()}


def _count(inputs) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def _tokenizer_throughput(model, rounds: int) -> None:
    from kerastl.export.core_tokenizer import CoreWordPiece

    texts = _raw_test_reviews()
    spec = [tf.TensorSpec([None], tf.string)]
    tokenizers = {
        "core ops (text signature)": tf.function(
            CoreWordPiece(model.preprocessor), input_signature=spec, autograph=False
        ),
        "TF-Text (KerasHub)": tf.function(
            model.preprocessor, input_signature=spec, autograph=False
        ),
    }
    print("| tokenizer | batch 1 strings/s | batch 32 strings/s |")
    print("| --- | ---: | ---: |")
    rates = {}
    for size in (1, 32):
        batches = [tf.constant(texts[i : i + size]) for i in range(0, 64 * size, size)]
        runs = {
            name: (lambda r, f=function, b=batches: f(b[r % len(b)]))
            for name, function in tokenizers.items()
        }
        times = interleaved_times(runs, max(rounds, len(batches)))
        rates[size] = {name: size / statistics.median(t[3:]) for name, t in times.items()}
    for name in tokenizers:
        print(f"| {name} | {rates[1][name]:.0f} | {rates[32][name]:.0f} |")


def _raw_test_reviews() -> list[str]:
    """The rotten_tomatoes test reviews as raw strings (the bundled builder's test split)."""
    reviews = kerastl.data.load_tfds("rotten_tomatoes", "test")
    return [text.decode() for text, _ in reviews.take(4096).as_numpy_iterator()]


if __name__ == "__main__":
    main()
