"""mednca.runtime: peak RSS of this process, and malloc keeping freed memory for reuse."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from mednca.runtime import retain_freed_memory


def test_peak_rss_grows_with_a_touched_allocation():
    # a fresh process, so no earlier test's peak can cover the allocation
    code = ("from mednca.runtime import peak_rss_mb; before = peak_rss_mb(); "
            "block = bytearray(200 << 20); print(before, peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(float, out.stdout.split())
    assert 0 < before < 150  # the interpreter alone, far below the block
    assert after >= before + 190  # the 200 MiB block, every page touched (zero-filled)


_PROBE = textwrap.dedent("""
    import ctypes, sys
    from pathlib import Path
    from mednca.runtime import retain_freed_memory

    def rss_mb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    applied = retain_freed_memory() if sys.argv[1] == "retain" else False
    block = bytearray(24 << 20)  # 24 MiB, touched
    held = rss_mb()
    del block
    print(applied, round(held - rss_mb(), 1))
""")


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_retain_freed_memory_keeps_a_freed_block_resident():
    def freed(mode: str) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
        applied, dropped = out.stdout.split()
        return applied, float(dropped)

    applied, dropped = freed("retain")
    assert applied == "True"
    assert dropped < 8  # the 24 MiB stayed with the process
    applied, dropped = freed("default")
    assert applied == "False" and dropped > 16  # glibc's default hands it back


def test_retain_freed_memory_says_whether_it_applied():
    expected = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() is expected
