"""``python -m fedlearn_lab``."""

import sys

from .cli import main

sys.exit(main())
