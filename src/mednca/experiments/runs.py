"""What the experiments that put several runs side by side share: their optional dependencies
and one name per run for tables and plots."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

from ..errors import MissingDependencyError
from ..nn.base import SegmentationModel


def require_extras(*modules: str) -> None:
    """Raise :class:`MissingDependencyError` (one line, with the install command) if a module is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"{', '.join(missing)} not installed; install it with: pip install 'mednca[report]' "
                                     f"(or pip install {' '.join(missing)})")


def run_labels(runs: Sequence[Path], models: Sequence[SegmentationModel]) -> list[str]:
    """Short display names of runs: the model type (``config.model``), with the run folder's name
    when two runs share a type, or with the whole path when folder names repeat too."""
    archs = [m.config.model for m in models]
    labels = [a if archs.count(a) == 1 else f"{a} ({r.name})" for a, r in zip(archs, runs)]
    if len(set(labels)) < len(labels):
        labels = [f"{a} ({r})" for a, r in zip(archs, runs)]
    return labels
