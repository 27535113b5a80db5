"""``python -m qflow.cli``: the same as ``qflow``."""

import sys

from qflow.cli.main import main

sys.exit(main())
