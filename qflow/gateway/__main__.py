"""``python -m qflow.gateway``: the same as ``qflow gateway``."""

import sys

from qflow.gateway.service import main

sys.exit(main())
