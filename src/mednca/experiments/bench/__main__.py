"""``python -m mednca.experiments.bench``: the benchmark, or one measurement (``--case``)."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
