"""CPU benchmark: mednca against the plain reference Med-NCA, in one process and one run.

    mednca bench [--quick] [--only PATTERN ...] [--data DIR] [--json-out FILE] [--markdown-out FILE]
    python benchmarks/bench.py ...          # the same, with the MSD hippocampus volume of ../shared
    python -m mednca.experiments.bench --case NAME --impl mednca --json   # one measurement (used internally)

What is measured (see :func:`~.cases.bench_cases` for the exact sizes):

* ``train-*``: one training iteration (forward + Dice/BCE loss + backward + Adam step) at the paper's
  hippocampus (16 and 32 channels) and prostate settings, 64 steps per level.
* ``infer-*``: inference of one 64x64 slice, one whole volume and one 256x256 slice. The volume is
  the first image of the MSD hippocampus folder given with ``--data`` (read with mednca's own
  loaders), without ``--data`` a synthetic 35x51x35 one; the tables say which.
* ``scale-*``: inference time and memory against image side (64..512) and steps (16..128).
* ``volume-default-1thread``: ``predict_volume`` of that volume at the default ``hippocampus``
  preset on one thread: time, peak memory, memory above the imports.
* ``onnx-slice64[-fp16|-int8]``: the ``infer-slice64`` model exported with ``mednca export`` (fp32, fp16 and
  int8 weights) and run by onnxruntime: file size and time per slice (only with the ``[export]`` extra).

Every compared case runs three fresh processes: ``check`` (mednca and the plain reference
:class:`mednca.nn.reference.PlainMedNCA` with the same weights and the same fire masks must agree
on outputs -- and for training on every gradient -- before anything is timed), then ``mednca`` and
``plain`` (timing; the peak RSS of that process alone). Both models draw their fire masks and
patch positions from one seeded ``torch.Generator`` with the same calls in the same order, so they
see identical masks.

FLOPs are counted analytically over *all* cells (:func:`~.cases.cell_step_flops`), so the
"effective" rate of mednca (which runs the per-cell network on firing cells only) may exceed what
it really computes; it is set against the machine's own fp32 ``torch.mm`` rate measured in the same
run.

The modules: :mod:`.options` and :mod:`.args` (the command line; no torch), :mod:`.cases` (the
workloads, their inputs and FLOPs), :mod:`.check` (the exactness check), :mod:`.measure` (one
measurement in this process), :mod:`.run` (the whole run over fresh processes, ``mednca bench``),
:mod:`.tables` (Markdown). The public names below are imported lazily, so that
``mednca.experiments.bench.args`` stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["Case", "Options", "bench_cases", "select_cases", "bench_model", "load_volume", "case_inputs",
           "cell_step_flops", "model_flops", "check_case", "run_one", "run_benchmark", "markdown", "run_cli",
           "main"]

_LAZY = {
    "Case": "cases", "bench_cases": "cases", "select_cases": "cases", "bench_model": "cases",
    "load_volume": "cases", "case_inputs": "cases", "cell_step_flops": "cases", "model_flops": "cases",
    "Options": "options", "check_case": "check", "run_one": "measure", "run_benchmark": "run",
    "run_cli": "run", "main": "run", "markdown": "tables",
}

if TYPE_CHECKING:  # pragma: no cover
    from .cases import (Case, bench_cases, bench_model, case_inputs, cell_step_flops, load_volume, model_flops,
                        select_cases)
    from .check import check_case
    from .measure import run_one
    from .options import Options
    from .run import main, run_benchmark, run_cli
    from .tables import markdown


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
