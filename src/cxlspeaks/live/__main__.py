"""``python -m cxlspeaks.live replay ...`` / ``python -m cxlspeaks.live live ...``."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
