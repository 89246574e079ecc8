"""``python -m app.worker``: the standalone flusher, same as ``tally flush``."""

import sys

from app.cli import main
from app.embedded import follow_parent

follow_parent()
sys.exit(main(["flush", *sys.argv[1:]]))
