"""mednca against a plain PyTorch Med-NCA: training/inference time, peak memory, GFLOP/s.

    python benchmarks/bench.py --json-out benchmarks/out/bench.json --markdown-out benchmarks/out/bench.md
    python benchmarks/bench.py --quick                # a smoke run (seconds)
    python benchmarks/bench.py --only 'infer-*'       # a subset (see --list)

The same as ``mednca bench``; everything lives in :mod:`mednca.experiments.bench`.
"""

import sys

from mednca.experiments.bench import main

if __name__ == "__main__":
    sys.exit(main())
