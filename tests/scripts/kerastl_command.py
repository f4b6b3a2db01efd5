"""`kerastl ARGS...` in this interpreter (for running the command as cluster workers)."""

import sys

from kerastl.app.cli import main

sys.exit(main(sys.argv[1:]))
