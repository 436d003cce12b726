"""One measurement of one case in this process: what each fresh process of the benchmark runs.

    python -m mednca.experiments.bench --case NAME --impl {mednca,plain,check} --json
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ...edge.export import OnnxSegmenter, export_model
from ...errors import MedNCAError
from ...nn.reference import PlainMedNCA
from ...pipeline.losses import dice_bce_loss
from ...pipeline.predict import predict_volume
from ...runtime import peak_rss_mb, retain_freed_memory, time_calls
from .cases import Case, bench_cases, bench_model, case_inputs, forward_all
from .check import check_case
from .options import EXIT_MEMORY, IMPLS, Options


def loadavg() -> list[float] | None:
    """The system's 1, 5 and 15 minute load averages (None where there are none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def start_memory_watchdog(limit_mb: float) -> None:
    """Exit the process (status :data:`EXIT_MEMORY`) when its resident memory passes ``limit_mb``
    MB (MiB), checked every 20 ms: one case must never push the machine (and the other jobs on it)
    out of memory. Does nothing with ``limit_mb`` <= 0 or without ``/proc/self/statm``."""
    statm = Path("/proc/self/statm")
    if limit_mb <= 0 or not statm.exists():
        return
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    def watch() -> None:
        while True:
            rss = int(statm.read_text().split()[1]) * page_mb
            if rss > limit_mb:
                sys.stderr.write(f"memory limit: RSS {rss:.0f} MB > {limit_mb:.0f} MB, case aborted\n")
                sys.stderr.flush()
                os._exit(EXIT_MEMORY)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True, name="rss-watchdog").start()


def _training_call(model: nn.Module, case: Case, images: Tensor, labels: Tensor,
                   g: torch.Generator) -> Callable[[], None]:
    """One training iteration: forward, Dice/BCE loss, backward, Adam step."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=case.config.lr, betas=case.config.betas)

    def call() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits, target = model(images, labels, generator=g)
        dice_bce_loss(logits, target).backward()
        optimizer.step()

    return call


def _onnx_call(model: nn.Module, case: Case, images: Tensor, out: dict[str, Any]) -> Callable[[], None]:
    """onnxruntime on the model exported with ``case.weights``; records ``file_bytes`` in ``out``."""
    with tempfile.TemporaryDirectory(prefix="mednca-bench-onnx-") as tmp:
        path = export_model(model, Path(tmp) / "model.onnx", weights=case.weights)
        out["file_bytes"] = path.stat().st_size
        runner = OnnxSegmenter(path, threads=torch.get_num_threads())  # holds the model's bytes
    return lambda: runner.logits(images)


def _inference_call(model: nn.Module, case: Case, images: Tensor, volume: np.ndarray | None,
                    g: torch.Generator) -> Callable[[], None]:
    """``predict_volume`` of the raw volume (``volume1t``), or the forward of all images."""
    model.eval()
    if case.group == "volume1t":
        return lambda: predict_volume(model, volume, generator=g)

    def call() -> None:
        with torch.no_grad():
            forward_all(model, images, g)

    return call


def _prepare(case: Case, opts: Options) -> None:
    """This process's settings for ``case``: threads, denormals, malloc, the memory watchdog."""
    threads = case.threads or opts.threads
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(opts.flush_denormal)
    if opts.retain_memory:
        retain_freed_memory()
    start_memory_watchdog(opts.max_rss_mb)


def run_one(name: str, impl: str, opts: Options) -> dict[str, Any]:
    """One measurement of case ``name`` with ``impl`` (mednca, plain or check), in this process.

    Meant to run in a fresh process (``python -m mednca.experiments.bench --case NAME --impl IMPL
    --json``) so that the peak RSS it reports belongs to this case alone.

    Returns:
        ``case``, ``impl``, ``threads``, ``input`` (volume cases), the load averages, and either
        :func:`check_case`'s fields or the timing: ``median_s``, ``min_s``, ``times_s``,
        ``warmup_s`` (seconds), ``repeats``, and the peak RSS in MB after the imports, after the
        setup and at the end (``peak_rss_mb``); ``onnx`` cases also ``file_bytes``.

    Raises:
        MedNCAError: An unknown case, or an implementation the case does not have.
    """
    rss_import = peak_rss_mb()
    case = {c.name: c for c in bench_cases(opts.quick)}.get(name)
    if case is None:
        raise MedNCAError(f"unknown case {name!r}")
    if impl not in (*IMPLS, "check") or (impl != "mednca" and not case.compare):
        raise MedNCAError(f"case {name} has no implementation {impl!r}")
    _prepare(case, opts)
    images, labels, volume, info = case_inputs(case, opts.data)
    out: dict[str, Any] = {"case": name, "impl": impl, "threads": torch.get_num_threads(), "loadavg_start": loadavg()}
    if info:
        out["input"] = info
    if impl == "check":
        out.update(check_case(case, images, labels, opts.seed))
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        return out

    model: nn.Module = bench_model(case.config, opts.seed)
    if impl == "plain":
        model = PlainMedNCA.from_mednca(model)
    g = torch.Generator().manual_seed(opts.seed + 1)
    if case.train:
        call = _training_call(model, case, images, labels, g)
    elif case.group == "onnx":
        call = _onnx_call(model, case, images, out)
    else:
        call = _inference_call(model, case, images, volume, g)
    rss_setup = peak_rss_mb()
    t = time_calls(call, opts.min_repeats, warmup=opts.warmup, budget_s=opts.budget, max_repeats=opts.max_repeats)
    out.update(median_s=statistics.median(t.timed), min_s=min(t.timed), times_s=[round(s, 6) for s in t.timed],
               warmup_s=[round(s, 6) for s in t.warmup], repeats=len(t.timed), rss_after_import_mb=round(rss_import, 1),
               rss_after_setup_mb=round(rss_setup, 1), peak_rss_mb=round(peak_rss_mb(), 1), loadavg_end=loadavg())
    return out
