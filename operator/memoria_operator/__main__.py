"""``python -m memoria_operator run``."""

import sys

from .cli import main

sys.exit(main())
