"""mednca against a plain PyTorch Med-NCA: training/inference time, peak memory, GFLOP/s.

    python benchmarks/bench.py --json-out benchmarks/out/bench.json --markdown-out benchmarks/out/bench.md
    python benchmarks/bench.py --quick                # a smoke run (seconds)
    python benchmarks/bench.py --only 'infer-*'       # a subset (see --list)

The same as ``mednca bench`` (everything lives in :mod:`mednca.experiments.bench`), with
``--data ../shared/data/Task04_Hippocampus`` (the MSD hippocampus volume for the volume cases)
when that folder exists; a ``--data`` given here replaces it.
"""

import sys
from pathlib import Path

from mednca.experiments.bench.run import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"

if __name__ == "__main__":
    sys.exit(main((["--data", str(DATA)] if DATA.is_dir() else []) + sys.argv[1:]))
