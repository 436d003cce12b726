"""The ``mednca`` command: one subcommand per pipeline stage, each a thin wrapper over the library.

Each command lives beside its argument registration (``add_NAME`` / ``cmd_NAME``) in
:mod:`.pipeline` (demo, train, predict, evaluate), :mod:`.models` (export, info, presets,
download) and :mod:`.experiments` (compare, robustness, report, bench). Library imports happen
inside the commands, so ``mednca --help`` is instant. User-fixable problems print one line
``mednca: error: ...`` and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..errors import MedNCAError
from ..runtime import tune_for_networks
from ..version import __version__
from . import experiments, models, pipeline

EPILOG = "Run 'mednca COMMAND --help' for a command's options. Docs: README.md and docs/cli.md."

#: The commands in the order ``mednca --help`` lists them.
COMMANDS = (pipeline.add_demo, pipeline.add_train, pipeline.add_predict, models.add_export, pipeline.add_evaluate,
            experiments.add_robustness, experiments.add_report, models.add_download, models.add_presets,
            models.add_info, experiments.add_bench, experiments.add_compare)

#: Commands that run no network (every other one gets :func:`mednca.runtime.tune_for_networks`).
LIGHT_COMMANDS = ("download", "presets", "info", "bench")


def build_parser() -> argparse.ArgumentParser:
    """The ``mednca`` argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="mednca", epilog=EPILOG,
        description="Med-NCA: medical image segmentation with Neural Cellular Automata on a plain CPU.")
    parser.add_argument("--version", action="version", version=f"mednca {__version__}")
    parser.set_defaults(func=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mednca ARGV``; returns the exit status (0 ok, 1 a user error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.func is None:
        parser.print_help()
        return 2
    try:
        if args.command not in LIGHT_COMMANDS:
            tune_for_networks()
        return args.func(args)
    except MedNCAError as exc:
        print(f"mednca: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mednca: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace) -> str:
    if args.command != "train":
        return ""
    launch = "torchrun ... -m mednca train --distributed" if args.distributed else "mednca train"
    return f" (checkpoint saved; continue with '{launch} --resume --data {args.data} --out {args.out}')"
