"""``python -m tformer.benchmarks``: the same as ``python -m tformer bench``."""

from __future__ import annotations

import sys

from tformer.benchmarks import main

sys.exit(main())
