"""A two-stage `FineTuner` run with a backup (`_workload.staged_run`); the
tests kill it (SIGKILL, SIGTERM) and resume it in their own process.

Usage: staged_training.py BACKUP_DIR OUT [SECONDS_PER_BATCH]
While it trains, writes OUT.progress (the epoch and batch that last ended).
"""

import sys

import tensorflow as tf
from _workload import Pause, staged_run

tf.config.experimental.enable_op_determinism()
backup_dir, out = sys.argv[1], sys.argv[2]
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
staged_run(backup_dir, callbacks=(Pause(pause, progress=out + ".progress"),))
