"""``python -m unseen.weights``: the ``unseen weights`` commands."""
import sys

from .cli import main

sys.exit(main())
