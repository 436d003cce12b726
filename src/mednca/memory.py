"""The peak memory of this process, measured so that a big parent process does not hide it."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


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
