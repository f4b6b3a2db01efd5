"""Which ops of an exported SavedModel stock TF Serving cannot run.

Stock TF Serving links the core TensorFlow kernels only. Ops registered by
add-on libraries (TF-Text's tokenizers, SentencePiece, TF Addons) load into a
Python process that imported them, so a SavedModel using them exports and
reloads fine here, and then fails to load in the model server. The core op
set is `tf.raw_ops`, generated when TensorFlow itself is built: add-on
libraries cannot extend it.

Stock TF Serving also disables XLA compilation (unless started with
`--xla_cpu_compilation_enabled`) and fails every request that reaches a
function compiled with `jit_compile=True`, with "XLA compilation disabled".
The scan lists such a function as `XLA_JIT_FUNCTION`.
"""

from __future__ import annotations

import functools
import os

import tensorflow as tf


class UnsupportedServingOpsError(RuntimeError):
    """A SavedModel uses ops that stock TF Serving does not have.

    Attributes:
        ops: signature name → sorted unsupported op names.
    """

    def __init__(self, ops: dict[str, list[str]], path: str):
        self.ops = ops
        listed = "; ".join(f"{name}: {', '.join(found)}" for name, found in ops.items())
        xla = any(XLA_JIT_FUNCTION in found for found in ops.values())
        super().__init__(
            f"{path!r} uses ops that stock TF Serving does not have ({listed}). Drop those "
            "signatures (e.g. send `token_ids` instead of `text`), or pass "
            "on_unsupported_ops='warn' for a model server built with those ops"
            + (" (XLA: started with --xla_cpu_compilation_enabled)." if xla else ".")
        )


# What the scan lists for a function marked `jit_compile=True` (`_XlaMustCompile`).
XLA_JIT_FUNCTION = "jit_compile=True function (stock TF Serving disables XLA)"


@functools.cache
def core_op_names() -> frozenset[str]:
    """Op names of core TensorFlow (what stock TF Serving can run)."""
    return frozenset(name for name in dir(tf.raw_ops) if not name.startswith("_"))


def scan_serving_ops(path: str | os.PathLike) -> dict[str, list[str]]:
    """Lists, per signature, the ops of a SavedModel outside core TensorFlow.

    Args:
        path: a SavedModel directory.

    Returns:
        Signature name → sorted op names stock TF Serving lacks (only the
        signatures that have some); `XLA_JIT_FUNCTION` for an XLA-compiled function.

    Example:
        >>> kerastl.export.scan_serving_ops("out/serving/reviews/1")
        {'text': ['FastWordpieceTokenizeWithOffsets']}
    """
    return unsupported_ops(tf.saved_model.load(os.fspath(path)))


def unsupported_ops(loaded) -> dict[str, list[str]]:
    """`scan_serving_ops` for a SavedModel already loaded with `tf.saved_model.load`."""
    core = core_op_names()
    found = {}
    for name, function in loaded.signatures.items():
        unsupported = sorted(
            op for op in graph_ops(function.graph.as_graph_def()) if op not in core
        )
        if unsupported:
            found[name] = unsupported
    return found


def graph_ops(graph_def) -> set[str]:
    """Op names used by a `GraphDef`, its function library included, and
    `XLA_JIT_FUNCTION` if a function in it must be compiled by XLA."""
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    library = {function.signature.name for function in graph_def.library.function}
    found = {op for op in ops if op not in library and not op.startswith("_")}
    if any(function.attr["_XlaMustCompile"].b for function in graph_def.library.function):
        found.add(XLA_JIT_FUNCTION)
    return found
