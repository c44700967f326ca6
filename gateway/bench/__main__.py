"""``python -m gateway.bench``."""

import sys

from gateway.bench.runner import main

sys.exit(main())
