"""Fixes for what onnxruntime 1.32 gets wrong on kerastl's int8 files.

1. `unused_gemm_beta`: dynamic int8 (`quantize_dynamic`, what text models
   get) quantizes `MatMul`; before it starts, it rewrites each `Gemm` as a
   `MatMul` (`ONNXModel.replace_gemm_with_matmul`), but only where
   `alpha == beta == 1`, and leaves the others in float32 without a word.
   tf2onnx writes a bias-less `Dense`/`EinsumDense` as `Gemm(A, B)` with
   `beta=0` and no `C`, where `beta` scales nothing: in a KerasHub BERT that
   is every attention projection (query, key, value, output: 24 of MiniLM's
   37 weight matrices), so its int8 file quantized only the feed-forward
   layers (batch 32: 1.6x float's speed; 2.2x with the fix, at the same
   accuracy; bench/README "deploy.py"). With `beta=0` the `C` term is zero
   whatever `C` holds, so dropping `C` and `beta` changes nothing, and
   onnxruntime's own rewrite then takes the node. Retire it when
   `replace_gemm_with_matmul` accepts a `Gemm` without `C` whatever its
   `beta` (`tests/test_quantization.py` shows the gap).
2. `exact_int8_on_cpus_without_vnni`: on an x86 CPU without VNNI (AVX2 or
   AVX-512F alone: AMD Zen 3 and older, Intel before Cascade Lake),
   onnxruntime's int8 kernels multiply uint8 activations by int8 weights with
   `vpmaddubsw`, which adds each pair of products in int16 and saturates at
   32767: two products of 255 x 127 overflow it. Every int8 file kerastl
   writes (static QDQ for images, dynamic for text) has such weights, so the
   same file computes exactly on a VNNI CPU and is off by ~10% of its output
   range on one without it (`tests/test_quantization.py` shows it; a 3x3
   convolution: 2.1 off on outputs of size 25, 0.16 with the fix).
   onnxruntime's own remedy is the session option `session.x64quantprecision`,
   off by default, which runs those products as uint8 x uint8 where the CPU
   lacks VNNI; kerastl's sessions (`onnx_runtime.onnx_session`: the parity
   and quantization gates) turn it on. `reduce_range` (7-bit weights) would avoid the
   overflow in the file itself, but costs agreement everywhere (Lite0: 0.972
   -> 0.924, bench/README "deploy.py"). Retire it when onnxruntime turns the
   option on by default.
"""

from __future__ import annotations


def unused_gemm_beta(model) -> int:
    """Drops, in place, `beta` (and `C`) from each `Gemm` whose `beta` is 0.

    `Gemm` computes `alpha * A' B' + beta * C`; with `beta = 0` that is
    `alpha * A' B'` whether or not a `C` is given, which is `Gemm(A, B)` with
    the default `beta`.

    Args:
        model: an `onnx.ModelProto`.

    Returns:
        How many `Gemm`s were changed.

    Example:
        >>> proto = onnx.load("model.onnx")
        >>> unused_gemm_beta(proto)
        24
    """
    from onnx import helper

    changed = 0
    for node in model.graph.node:
        beta = next((a for a in node.attribute if a.name == "beta"), None)
        if node.op_type != "Gemm" or beta is None or helper.get_attribute_value(beta) != 0:
            continue
        node.attribute.remove(beta)
        del node.input[2:]
        changed += 1
    return changed


def exact_int8_on_cpus_without_vnni(options) -> None:
    """Makes int8 products exact, in place, on x86 CPUs without VNNI.

    Sets onnxruntime's `session.x64quantprecision`, which has an effect only
    where the CPU lacks VNNI and a weight lies outside [-64, 63].

    Args:
        options: an `onnxruntime.SessionOptions`.

    Example:
        >>> options = onnxruntime.SessionOptions()
        >>> exact_int8_on_cpus_without_vnni(options)
        >>> onnxruntime.InferenceSession("model.int8.onnx", options)
    """
    options.add_session_config_entry("session.x64quantprecision", "1")
