"""``python -m app`` is the ``tally`` command."""

import sys

from app.cli import main

sys.exit(main())
