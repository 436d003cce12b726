"""The whole benchmark run (the parent process): every measurement in a fresh process, the
summaries and ratios, the JSON and Markdown files, and ``mednca bench`` itself."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...data.cases import find_cases
from ...errors import MedNCAError
from ...formats import write_json
from ...fsutil import atomic_write_text
from ...runtime import run_json_process
from ...version import __version__
from .cases import Case, bench_cases, model_flops, select_cases
from .check import ATOL, GRAD_RTOL, RTOL
from .args import build_parser
from .measure import loadavg, run_one
from .options import EXIT_CHECK_FAILED, EXIT_MEMORY, IMPLS, Options, options_from_args
from .tables import markdown

Log = Callable[[str], None]


# -- the machine ---------------------------------------------------------------------------------
def measure_matmul(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """fp32 ``torch.mm`` of two (n, n) matrices after one warm-up: ``median_s`` (seconds) and
    ``gflops`` over ``repeats``, and the ``threads`` used."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn((n, n), generator=g), torch.randn((n, n), generator=g)
    out = torch.empty((n, n))
    torch.mm(a, b, out=out)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"n": n, "repeats": repeats, "median_s": median, "gflops": 2 * n ** 3 / median / 1e9,
            "threads": torch.get_num_threads()}


def _proc_field(path: str, prefix: str) -> str | None:
    """The rest of the first line of ``path`` starting with ``prefix`` (None if none or unreadable)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip()
    except OSError:
        pass
    return None


def _mem_available_mb() -> float | None:
    """Memory available to new processes, in MB (MiB), from ``/proc/meminfo``."""
    kb = _proc_field("/proc/meminfo", "MemAvailable:")
    return int(kb.split()[0]) / 1024 if kb else None


def _cpu_name() -> str:
    name = _proc_field("/proc/cpuinfo", "model name")
    return name.lstrip(":").strip() if name else platform.processor() or platform.machine()


def _meta(opts: Options, matmul_threads: int) -> dict[str, Any]:
    return {"mednca_version": __version__, "torch_version": torch.__version__, "python": platform.python_version(),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": matmul_threads,
            "quick": opts.quick, "min_repeats": opts.min_repeats, "budget_s": opts.budget,
            "warmup": opts.warmup, "max_rss_mb": opts.max_rss_mb, "seed": opts.seed, "data": opts.data,
            "flush_denormal": opts.flush_denormal, "retain_memory": opts.retain_memory,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_start": loadavg(),
            "tolerance": {"rtol": RTOL, "atol": ATOL, "grad_rtol": GRAD_RTOL}}


# -- measurements in fresh processes ---------------------------------------------------------------
def run_child(name: str, impl: str, opts: Options, timeout: float | None = None) -> dict[str, Any]:
    """:func:`mednca.experiments.bench.measure.run_one` in a fresh process.

    Returns:
        Its result, or ``{"case", "impl", "error"}`` (plus ``memory_abort``: True when the memory
        watchdog stopped it) if it failed; both with ``process_wall_s`` (seconds).
    """
    proc = run_json_process(["-m", "mednca.experiments.bench", "--case", name, "--impl", impl, "--json",
                             *opts.child_args()], timeout)
    result = proc.result
    if result is None or proc.returncode not in (0, EXIT_CHECK_FAILED):
        memory = proc.returncode == EXIT_MEMORY
        why = "memory limit exceeded" if memory else "failed"
        result = {"case": name, "impl": impl,
                  "error": f"{why} (exit {proc.returncode}): {' | '.join(proc.stderr_tail)}"}
        if memory:
            result["memory_abort"] = True
    result["process_wall_s"] = round(proc.wall_s, 2)
    return result


def _log_run(log: Log, prefix: str, impl: str, run: dict[str, Any]) -> None:
    if "error" in run:
        log(f"{prefix} {impl}: {run['error']}")
    elif impl == "check":
        grad = f", max rel Δ grad {run['grad_max_rel_diff']:.2e}" if "grad_max_rel_diff" in run else ""
        log(f"{prefix} check: {'ok' if run['ok'] else 'FAILED'}, max |Δ| output {run['max_abs_diff']:.2e} "
            f"(max |out| {run['max_abs_output']:.2e}){grad}")
    else:
        log(f"{prefix} {impl}: {run['median_s'] * 1e3:.1f} ms (median of {run['repeats']}), "
            f"peak RSS {run['peak_rss_mb']:.0f} MB")


def measure_case(case: Case, opts: Options, log: Log, prefix: str = "") -> tuple[dict[str, dict], list[str], list[str]]:
    """The check (compared cases), then each implementation of ``case``, each in a fresh process.

    A case whose check fails is not timed. A measurement stopped at the memory limit is no
    failure (the case is too big for this machine); a case whose check does not fit is still
    timed per implementation (each may fit alone), and shown unchecked.

    Returns:
        (the runs by implementation, failures, memory aborts as ``case/impl``).
    """
    runs: dict[str, dict] = {}
    failures: list[str] = []
    memory_aborts: list[str] = []
    for impl in ["check", *IMPLS] if case.compare else ["mednca"]:
        run = runs[impl] = run_child(case.name, impl, opts)
        _log_run(log, prefix, impl, run)
        if run.get("memory_abort"):
            memory_aborts.append(f"{case.name}/{impl}")
        elif "error" in run:
            failures.append(f"{case.name}/{impl}: {run['error']}")
            if impl == "check":
                break
        elif impl == "check" and not run["ok"]:
            failures.append(f"{case.name}: mednca and plain outputs disagree ({json.dumps(run)})")
            break  # never time a case whose outputs disagree
    return runs, failures, memory_aborts


# -- summaries -------------------------------------------------------------------------------------
def case_summary(case: Case, runs: dict[str, dict], matmul_gflops: float, info: dict | None) -> dict[str, Any]:
    """A case's entry of the results: its settings, all-cell ``flops``, the runs (each timed one
    with ``effective_gflops`` and ``pct_of_matmul``), and with both implementations timed the
    ``speedup`` (plain time / mednca time) and ``memory_ratio`` (plain peak RSS / mednca's)."""
    c = case.config
    batch = info["slices"] if info and "slices" in info else c.batch_size
    flops = model_flops(c, batch, c.image_size, train=case.train)
    summary: dict[str, Any] = {"name": case.name, "group": case.group, "note": case.note, "params": case.params(),
                               "flops": flops}
    if info:
        summary["input"] = info
    if "check" in runs:
        summary["check"] = runs["check"]
    for impl in IMPLS:
        run = runs.get(impl)
        if run is None:
            continue
        if "median_s" in run:
            rate = flops / run["median_s"] / 1e9
            run["effective_gflops"] = rate
            run["pct_of_matmul"] = 100 * rate / matmul_gflops if matmul_gflops else None
        summary[impl] = run
    m, p = summary.get("mednca", {}), summary.get("plain", {})
    if "median_s" in m and "median_s" in p:
        summary["speedup"] = p["median_s"] / m["median_s"]
        summary["memory_ratio"] = p["peak_rss_mb"] / m["peak_rss_mb"]
    return summary


def _geomean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def ratios(cases: Sequence[dict]) -> dict[str, Any]:
    """Speed-ups by group (with geometric means) and each case's rate as % of the matmul rate."""
    def speedups(groups: tuple[str, ...]) -> dict[str, float]:
        return {c["name"]: c["speedup"] for c in cases if c["group"] in groups and "speedup" in c}

    train, infer, scale = speedups(("train",)), speedups(("infer",)), speedups(("side", "steps"))
    # the matmul rate is measured with the run's threads: the one-thread case is left out
    pct = {c["name"]: {impl: c[impl].get("pct_of_matmul") for impl in IMPLS if impl in c and "median_s" in c[impl]}
           for c in cases if c["group"] != "volume1t" and any(impl in c for impl in IMPLS)}
    return {"train_speedup": train, "infer_speedup": infer, "scale_speedup": scale,
            "train_speedup_geomean": _geomean(list(train.values())),
            "infer_speedup_geomean": _geomean(list(infer.values())), "effective_pct_of_matmul": pct}


# -- the run -----------------------------------------------------------------------------------------
def _stderr_log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_benchmark(opts: Options, only: Sequence[str] | None = None, json_out: str | Path | None = None,
                  markdown_out: str | Path | None = None, log: Log | None = None) -> dict[str, Any]:
    """Run the selected cases, each measurement in a fresh process; write JSON and Markdown.

    Without ``opts.max_rss_mb`` a measurement may take 80 % of the memory available at the start.

    Returns:
        The results: ``meta``, ``matmul`` (:func:`measure_matmul`), ``cases``
        (:func:`case_summary` each), ``ratios``, ``failures`` and ``memory_aborts``. Also written
        to ``json_out`` after every case, so a long run that is stopped keeps what it measured.
    """
    log = log or _stderr_log
    cases = select_cases(bench_cases(opts.quick), only)
    if opts.data and any(c.source == "volume" for c in cases):
        find_cases(Path(opts.data), labels=None)  # a wrong --data fails here, not in every volume case
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if not opts.max_rss_mb:
        avail = _mem_available_mb()
        opts.max_rss_mb = round(0.8 * avail) if avail else 0.0
    t_start = time.perf_counter()
    n_mm, r_mm = (256, 3) if opts.quick else (2048, 7)
    matmul = measure_matmul(n_mm, r_mm)
    log(f"matmul {n_mm}x{n_mm} fp32: {matmul['gflops']:.1f} GFLOP/s ({matmul['threads']} threads)")
    results: dict[str, Any] = {"meta": _meta(opts, torch.get_num_threads()), "matmul": matmul, "cases": [],
                               "ratios": {}}
    failures, memory_aborts = [], []
    for i, case in enumerate(cases, 1):
        runs, failed, aborted = measure_case(case, opts, log, f"[{i}/{len(cases)}] {case.name}")
        failures += failed
        memory_aborts += aborted
        info = next((r["input"] for r in runs.values() if "input" in r), None)
        results["cases"].append(case_summary(case, runs, matmul["gflops"], info))
        results["ratios"] = ratios(results["cases"])
        results["meta"]["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        if json_out:
            write_json(json_out, results)
    results["meta"]["loadavg_end"] = loadavg()
    results["failures"] = failures
    results["memory_aborts"] = memory_aborts
    if json_out:
        write_json(json_out, results)
    if markdown_out:
        atomic_write_text(markdown_out, markdown(results))
    return results


def run_cli(args: argparse.Namespace) -> int:
    """``mednca bench``: run, print the Markdown tables, write the files.

    Raises:
        MedNCAError: An exactness check or a measurement failed (``mednca`` exits with status 1).
    """
    opts = options_from_args(args)
    if getattr(args, "list", False):
        for case in bench_cases(opts.quick):
            print(f"{case.name:24s} {case.group:8s} {case.note}")
        return 0
    results = run_benchmark(opts, getattr(args, "only", None), getattr(args, "json_out", None),
                            getattr(args, "markdown_out", None))
    print(markdown(results), flush=True)
    if results["failures"]:
        raise MedNCAError(f"{len(results['failures'])} measurement(s) failed: " + "; ".join(results["failures"])[:2000])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mednca.experiments.bench``: ``mednca bench``, or with ``--case`` one measurement
    in this process (printed as JSON; status :data:`EXIT_CHECK_FAILED` if its check failed)."""
    args = build_parser(sys.modules[__package__].__doc__).parse_args(argv)
    try:
        if not args.case:
            return run_cli(args)
        opts = options_from_args(args)
        opts.max_rss_mb, opts.seed = args.max_rss_mb or opts.max_rss_mb, args.seed
        result = run_one(args.case, args.impl, opts)
        print(json.dumps(result) if args.json else json.dumps(result, indent=2), flush=True)
        return EXIT_CHECK_FAILED if result.get("ok") is False else 0
    except MedNCAError as exc:
        print(f"mednca: error: {exc}", file=sys.stderr)
        return 1
