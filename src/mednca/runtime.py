"""How this process runs and is measured: the CPU settings every network command applies
(denormals flushed, freed memory kept), its peak memory, timing of repeated calls, and
measurements taken in a fresh process."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from malloc's heap (glibc's largest dynamic threshold, 32 MiB).
MMAP_THRESHOLD = 32 << 20
#: Free memory kept at the top of the heap before it is handed back to the system (2 GiB - 1).
TRIM_THRESHOLD = (1 << 31) - 1


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (MiB).

    On Linux this is ``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` also counts the memory of
    the process that started this one (Linux carries the parent's peak over the ``exec`` of a
    forked child), so a big parent would hide a small child's memory. Elsewhere ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 ** 2 if sys.platform == "darwin" else rss / 1024.0  # bytes on macOS, KiB on Linux


def retain_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to the system.

    A training iteration allocates and frees its whole working set (the tensors kept for
    backward: ~1 GB at the hippocampus benchmark setting). By default glibc returns large freed
    blocks to the kernel, so every iteration page-faults the same memory in again (zeroed by the
    kernel): measured here, a prostate batch-4 iteration of 2.1-3.0 s became 1.75-1.8 s. With this
    setting blocks up to :data:`MMAP_THRESHOLD` come from the heap and up to
    :data:`TRIM_THRESHOLD` of free heap is kept: the process's resident memory stays near its
    peak instead of falling between iterations (the peak itself does not change).

    Called by every ``mednca`` command that runs a network; a process setting, so call it
    yourself when training through the Python API. Does nothing outside Linux with glibc.

    Returns:
        True if the setting was applied.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    return mmap_ok and trim_ok


def flush_denormals() -> None:
    """Treat denormal floats as zero on the CPU (``torch.set_flush_denormal``), for this process.

    Gradients of long NCA step chains drift into the denormal range (< 1.2e-38), where CPU
    arithmetic is many times slower: one prostate training iteration took 2.3x longer with them.
    Flushing them changes nothing measurable in the results. Called by every command that runs
    a network; call it yourself when using the Python API for training.
    """
    import torch

    torch.set_flush_denormal(True)


def tune_for_networks() -> None:
    """The process settings of every ``mednca`` command that runs a network:
    :func:`flush_denormals` and :func:`retain_freed_memory`."""
    flush_denormals()
    retain_freed_memory()


@dataclass
class Timings:
    """Seconds per call of :func:`time_calls`: the untimed warm-up calls and the timed ones."""

    warmup: list[float]
    timed: list[float]

    @property
    def median_ms(self) -> float:
        """Median of the timed calls, in milliseconds."""
        ordered = sorted(self.timed)
        mid = len(ordered) // 2
        median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        return median * 1000.0


def time_calls(fn: Callable[[], Any], repeats: int = 5, *, warmup: int = 1, budget_s: float = 0.0,
               max_repeats: int = 20) -> Timings:
    """Call ``fn`` ``warmup`` times untimed, then time it ``repeats`` times (wall clock).

    Args:
        budget_s: With a warm-up, repeat more often to fill about this many seconds (at most
            ``max_repeats`` calls); 0 times exactly ``repeats`` calls.
    """
    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    n = max(1, repeats)
    if warm and budget_s > 0:
        n = max(n, min(max_repeats, int(budget_s / max(warm[-1], 1e-6))))
    timed = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        timed.append(time.perf_counter() - t0)
    return Timings(warm, timed)


@dataclass
class ProcessResult:
    """What :func:`run_json_process` got back from a measuring process."""

    returncode: int
    result: dict[str, Any] | None  # its last stdout line as JSON, None if there was none
    stderr_tail: list[str]  # its last three stderr lines
    wall_s: float


def run_json_process(args: Sequence[str], timeout: float | None = None) -> ProcessResult:
    """Run ``python ARGS`` in a fresh process (so its peak memory is its own) and read the JSON
    object it prints as its last line of output."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    return ProcessResult(proc.returncode, result if isinstance(result, dict) else None,
                         proc.stderr.strip().splitlines()[-3:], wall)
