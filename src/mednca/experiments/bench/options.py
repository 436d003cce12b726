"""How a benchmark run measures: :class:`Options`, read from the command line. No torch import."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

#: The implementations a compared case times (``check`` runs both and compares them).
IMPLS = ("mednca", "plain")
#: Exit status of a measuring process whose exactness check failed, and of one the memory
#: watchdog stopped.
EXIT_CHECK_FAILED, EXIT_MEMORY = 3, 75
#: Shape of the synthetic volume the volume cases segment without ``--data`` (a typical MSD
#: hippocampus image).
SYNTHETIC_VOLUME_SHAPE = (35, 51, 35)


@dataclass
class Options:
    """How measurements are repeated, and where the run's inputs come from.

    Attributes:
        quick: Tiny sizes (the same case names), 1 repeat, no time budget: a smoke run.
        repeats: Minimum timed repeats per measurement (None: 3; 1 with ``quick``).
        budget_s: Seconds of timed repeats to aim for per measurement, at most ``max_repeats``
            repeats (None: 10; 0 with ``quick``).
        max_repeats: Most timed repeats of one measurement.
        warmup: Untimed calls before the timed ones.
        threads: Torch threads (None: torch's default; a case may set its own).
        data: MSD hippocampus task folder for the volume cases (None: a synthetic volume).
        max_rss_mb: A measuring process whose resident memory passes this many MB (MiB) is
            stopped (0: no limit).
        seed: Seed of the weights and of the fire-mask generator.
        flush_denormal: ``torch.set_flush_denormal`` in every measurement (both implementations).
        retain_memory: :func:`mednca.runtime.retain_freed_memory` in every measurement (both).
    """

    quick: bool = False
    repeats: int | None = None
    budget_s: float | None = None
    max_repeats: int = 20
    warmup: int = 1
    threads: int | None = None
    data: str | None = None
    max_rss_mb: float = 0.0
    seed: int = 0
    flush_denormal: bool = True
    retain_memory: bool = True

    @property
    def min_repeats(self) -> int:
        return self.repeats or (1 if self.quick else 3)

    @property
    def budget(self) -> float:
        """Seconds of timed repeats to aim for per measurement."""
        return self.budget_s if self.budget_s is not None else (0.0 if self.quick else 10.0)

    def child_args(self) -> list[str]:
        """These options as arguments of ``python -m mednca.experiments.bench --case ...``."""
        args = ["--repeats", str(self.min_repeats), "--budget", str(self.budget), "--warmup", str(self.warmup),
                "--max-rss-mb", str(self.max_rss_mb), "--seed", str(self.seed)]
        if self.quick:
            args.append("--quick")
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.data:
            args += ["--data", str(self.data)]
        if not self.flush_denormal:
            args.append("--keep-denormals")
        if not self.retain_memory:
            args.append("--release-memory")
        return args


def options_from_args(args: argparse.Namespace) -> Options:
    """The :class:`Options` of parsed ``mednca bench`` arguments (missing ones take their defaults)."""
    gb = getattr(args, "max_rss_gb", None)
    return Options(quick=bool(getattr(args, "quick", False)), repeats=getattr(args, "repeats", None),
                   budget_s=getattr(args, "budget", None), warmup=getattr(args, "warmup", 1) or 0,
                   threads=getattr(args, "threads", None), data=getattr(args, "data", None),
                   max_rss_mb=gb * 1024 if gb else 0.0,
                   flush_denormal=not getattr(args, "keep_denormals", False),
                   retain_memory=not getattr(args, "release_memory", False))
