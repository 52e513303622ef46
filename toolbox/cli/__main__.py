"""``python -m toolbox.cli``: the console script's entry point, for an environment without the script."""

import sys

from . import main

sys.exit(main())
