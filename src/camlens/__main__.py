"""`python -m camlens` is the `camlens` command."""

import sys

from camlens.cli import main

sys.exit(main())
