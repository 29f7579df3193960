"""``python -m microbroker.cli``: the same as the ``microbroker`` console script."""

import sys

from . import main

sys.exit(main())
