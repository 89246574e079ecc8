"""``python -m app.worker``: the standalone flusher, same as ``tally flush``."""

import sys

from app.cli import main

sys.exit(main(["flush", *sys.argv[1:]]))
