"""Silencing what TensorFlow's C++ runtime writes straight to the stderr descriptor.

TF 2.21 logs through absl before its log level is read, so
`TF_CPP_MIN_LOG_LEVEL` does not hold back its start-up lines ("All log
messages before absl::InitializeLog()", "failed call to cuInit", ...), and an
eager decode of a corrupt file prints "Local rendezvous is aborting" without
the file's name. Python-level output is not touched.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_silenced(replay_on_error: bool = True) -> Iterator[None]:
    """Sends file descriptor 2 to a temporary file for the duration of the block.

    Args:
        replay_on_error: if the block raises, write what was captured to the
            real stderr first, so a crash keeps its native diagnostics.

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
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed and replay_on_error:
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
