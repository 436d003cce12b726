"""The command line of ``mednca bench`` (argparse only: no torch import, so ``mednca --help`` stays fast)."""

from __future__ import annotations

import argparse

from ...argtypes import positive_int
from .options import IMPLS, SYNTHETIC_VOLUME_SHAPE


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``mednca bench`` (also of ``python -m mednca.experiments.bench``)."""
    p.add_argument("--quick", action="store_true", help="tiny sizes and 1 repeat (a smoke test, seconds)")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="run only cases whose name matches (glob or substring; comma-separated or repeated)")
    p.add_argument("--list", action="store_true", help="list the case names and exit")
    p.add_argument("--json-out", metavar="FILE", help="write all results as JSON")
    p.add_argument("--markdown-out", metavar="FILE", help="write the Markdown tables (also printed)")
    p.add_argument("--repeats", type=positive_int,
                   help="minimum timed repeats per measurement (default 3; 1 with --quick)")
    p.add_argument("--budget", type=float, help="seconds of timed repeats to aim for per measurement, at most 20 "
                   "repeats (default 10; 0 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs (default 1)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's default)")
    p.add_argument("--data", metavar="DIR",
                   help="MSD hippocampus task folder (imagesTr/) whose first image (by case id) the volume cases "
                        "segment (default: a synthetic " + "x".join(map(str, SYNTHETIC_VOLUME_SHAPE))
                        + " volume; the tables say which was used)")
    p.add_argument("--max-rss-gb", type=float, help="abort a measurement whose memory passes this "
                   "(default 80%% of the memory available at the start)")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not flush denormal floats to zero (by default both implementations flush them, "
                        "as mednca's commands do)")
    p.add_argument("--release-memory", action="store_true",
                   help="let malloc hand freed memory back to the system (glibc's default; by default both "
                        "implementations keep it for reuse, as mednca's commands do)")


def add_measurement_arguments(p: argparse.ArgumentParser) -> None:
    """The options of one measurement in this process (what the benchmark runs in a fresh process)."""
    internal = p.add_argument_group("one measurement (run by the benchmark in a fresh process)")
    internal.add_argument("--case", help="measure this case only, in this process")
    internal.add_argument("--impl", default="mednca", choices=(*IMPLS, "check"))
    internal.add_argument("--json", action="store_true", help="print the measurement as one JSON line")
    internal.add_argument("--max-rss-mb", type=float, default=0.0, help=argparse.SUPPRESS)
    internal.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m mednca.experiments.bench``: ``mednca bench``'s options and one
    measurement's."""
    parser = argparse.ArgumentParser(prog="python -m mednca.experiments.bench", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    add_measurement_arguments(parser)
    return parser
