"""Holding back what TensorFlow's C++ runtime writes straight to the stderr descriptor,
and one TensorFlow warning the `kerastl` command's user cannot act on.

TF 2.21 logs through absl before its log level is read, so
`TF_CPP_MIN_LOG_LEVEL` does not hold back its start-up lines ("All log
messages before absl::InitializeLog()", "failed call to cuInit", ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# absl/TF C++ log lines ("I0000 00:00:1795... 123 port.cc:153] ..."), absl's preamble,
# the second line of the CPU-feature notice, and the LiteRT converter's and
# interpreter's notices ("fully_quantize: 0, inference_type: 6, ...", "INFO: Created
# TensorFlow Lite XNNPACK delegate for CPU.").
_NATIVE_LOG = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:[\d.]+\s+\d+ \S+:\d+\] "
    r"|WARNING: All log messages before absl::"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|fully_quantize: \d+, inference_type: "
    r"|INFO: Created TensorFlow Lite XNNPACK delegate)"
)


@contextlib.contextmanager
def native_stderr_silenced(
    expected: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Drops TF's C++ log lines written to file descriptor 2 during the block.

    Everything else written there (Python warnings, other programs' messages)
    is written to `sys.stderr` when the block ends; if the block raises, all of
    it is, C++ lines included, so a crash keeps its native diagnostics.

    Args:
        expected: exceptions that are an outcome the caller reports, not a
            crash (an export the gate refuses): their C++ lines are dropped too.

    Example:
        >>> with native_stderr_silenced():
        ...     import tensorflow
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor (some notebooks, captured streams)
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = False
        try:
            yield
        except expected:
            raise
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = lines if failed else [line for line in lines if not _NATIVE_LOG.match(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


class _KerasConvRetracing(logging.Filter):
    """Drops TF's "triggered tf.function retracing" warning about Keras's `_conv_xla`.

    Keras's TensorFlow backend makes a new `tf.function` for each grouped
    convolution it runs outside a traced function (ConvNeXt's, in Grad-CAM or
    an export's check against Keras), and TF warns after five of them: Keras's
    design, which nothing in the command's input can change.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "_conv_xla" in message)


def drop_keras_conv_retracing_warnings() -> None:
    """Puts `_KerasConvRetracing` on TF's Python logger (once).

    Example:
        >>> drop_keras_conv_retracing_warnings()  # the `kerastl` command, at its start
    """
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _KerasConvRetracing) for f in logger.filters):
        logger.addFilter(_KerasConvRetracing())
