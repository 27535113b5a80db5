"""``python -m qflow.emulator``: the same as ``qflow emulator``."""

import sys

from qflow.emulator.service import main

sys.exit(main())
