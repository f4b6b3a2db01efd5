"""Fixes for what onnxruntime 1.32's quantizer misses on kerastl's graphs.

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
