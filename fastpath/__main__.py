"""``python -m fastpath``: the same as the ``fastpath`` command."""
import sys

from fastpath.cli import main

sys.exit(main())
