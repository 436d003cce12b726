"""Commands of the experiments: compare, robustness, report, bench.

Each command is a pair: ``add_NAME(sub)`` registers its arguments, ``cmd_NAME(args)`` runs it.
Library imports happen inside the commands, so ``mednca --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import argtypes
from ..experiments.bench.args import add_bench_arguments
from .common import case_progress, log


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare run folders: size, test Dice/HD95, CPU speed, memory",
                       description="One table row per run: model type, parameters, checkpoint size, test Dice "
                                   "mean ± std and HD95 from RUN/eval_test.json, CPU inference time per slice "
                                   "and per volume (median of repeats) and peak memory of inference (in a "
                                   "fresh process per run). Printed as Markdown; -o also writes it with a "
                                   "JSON file beside it.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (e.g. a Med-NCA and a UNet run)")
    p.add_argument("-o", "--output", help="Markdown file to write (a .json with the rows is written beside it)")
    p.add_argument("--evaluate", action="store_true",
                   help="run 'mednca evaluate RUN' (test split) for runs without eval_test.json")
    p.add_argument("--repeats", type=argtypes.positive_int, default=5, help="timed repeats, median reported (default 5)")
    p.add_argument("--threads", type=argtypes.positive_int, help="torch threads for the timings (default: torch's)")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (faster; no memory figures)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from ..experiments.compare import comparison_json_path, compare_runs, markdown_table, write_comparison
    from ..fsutil import check_output

    if args.output:  # refuse existing outputs before measuring anything
        for path in (args.output, comparison_json_path(args.output)):
            check_output(path, args.overwrite)
    rows = compare_runs(args.runs, evaluate=args.evaluate, repeats=args.repeats, threads=args.threads,
                        isolate=not args.in_process, log=lambda text: print(text, file=sys.stderr, flush=True))
    table = markdown_table(rows)
    log(table)
    if args.output:
        md, js = write_comparison(rows, args.output, overwrite=args.overwrite, table=table)
        log(f"written to {md} and {js}")
    return 0


def add_robustness(sub) -> None:
    p = sub.add_parser("robustness", help="Dice of runs under graded MRI artefacts and geometry changes",
                       description="Score each run's model on perturbed copies of its test cases: MRI "
                                   "artefacts (TorchIO: noise, spike, ghosting, motion, bias field, "
                                   "anisotropy) and in-plane translation and zoom (label moved alike), each at "
                                   "graded severities, with fixed seeds so every model sees identical inputs. "
                                   "Writes robustness.csv (per case, with a quality score), robustness.json "
                                   "(means per perturbation and severity) and robustness.png.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders sharing the same test split")
    p.add_argument("--data", help="task folder (default: the one the first run was trained on)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to use (default test)")
    p.add_argument("-o", "--output", help="output folder (default: RUN/robustness_SPLIT of the first run)")
    p.add_argument("--severities", type=argtypes.positive_int, default=3, help="graded severities per perturbation (default 3)")
    p.add_argument("--cases", type=argtypes.positive_int, metavar="N", help="use only the first N cases of the split")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the perturbations and fire masks (default 0)")
    p.add_argument("--ensemble", type=argtypes.ensemble, default=4, metavar="K",
                   help="stochastic passes per prediction, for the quality score (default 4)")
    p.add_argument("--perturbation", action="append", metavar="NAME",
                   help="only this perturbation (repeatable; default all: noise, spike, ghosting, motion, "
                        "bias_field, anisotropy, translation, zoom_in, zoom_out)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_robustness)


def cmd_robustness(args: argparse.Namespace) -> int:
    from ..data.runfolder import RunFolder
    from ..experiments.robustness import run_robustness

    out = Path(args.output) if args.output else RunFolder(args.runs[0]).robustness_dir(args.split)
    rows = run_robustness(args.runs, args.data, args.split, out_dir=out, severities=args.severities,
                          cases=args.cases, seed=args.seed, ensemble=args.ensemble,
                          perturbations=args.perturbation, overwrite=args.overwrite,
                          progress=case_progress("robustness"))
    log(f"{len(rows)} rows written to {out / 'robustness.csv'}; summary {out / 'robustness.json'}, "
        f"plot {out / 'robustness.png'}")
    return 0


def add_report(sub) -> None:
    p = sub.add_parser("report", help="a Markdown report: comparison, robustness, quality, example cases",
                       description="Gather evaluated runs into OUT/README.md with figures: the comparison table "
                                   "(a 'mednca compare' JSON if given or found, else from each eval_test.json), "
                                   "robustness plots, quality score vs Dice, overlays of the best, median and "
                                   "worst test case, and a GIF of the NCA growing (Med-NCA runs).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders evaluated with 'mednca evaluate RUN'")
    p.add_argument("-o", "--output", default="report", help="output folder (default report/)")
    p.add_argument("--compare", metavar="FILE", help="a 'mednca compare' JSON (or its Markdown)")
    p.add_argument("--robustness", action="append", metavar="DIR",
                   help="a 'mednca robustness' output folder (repeatable; default: RUN/robustness_SPLIT if present)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="evaluated split (default test)")
    p.add_argument("--data", help="task folder for the example cases (default: each run's training data)")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of anything predicted for the figures (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..experiments.report import make_report

    path = make_report(args.runs, args.output, compare=args.compare, robustness=args.robustness,
                       split=args.split, data_dir=args.data, seed=args.seed, overwrite=args.overwrite)
    log(f"report written to {path}")
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time and memory of mednca against a plain PyTorch Med-NCA",
                       description="Training and inference time, peak memory and GFLOP/s of mednca against a "
                                   "plain PyTorch Med-NCA with the same weights and fire masks (checked to agree "
                                   "before timing); each measurement in a fresh process. Prints Markdown tables.")
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..experiments.bench import run_cli

    return run_cli(args)
