"""mednca: Med-NCA medical image segmentation with Neural Cellular Automata, fast on plain CPUs.

>>> from mednca import MedNCA, MedNCAConfig
>>> model = MedNCA(MedNCAConfig.preset("hippocampus"))

The public names are imported lazily so that ``import mednca`` (and ``mednca --help``) does not
load torch until a model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .version import __version__

__all__ = ["MedNCA", "MedNCAConfig", "NCALevel", "MedNCAError", "train", "predict_volume",
           "evaluate_folders", "__version__"]

_LAZY = {
    "MedNCA": ("model", "MedNCA"),
    "MedNCAConfig": ("config", "MedNCAConfig"),
    "NCALevel": ("nca", "NCALevel"),
    "MedNCAError": ("errors", "MedNCAError"),
    "train": ("train", "train"),
    "predict_volume": ("predict", "predict_volume"),
    "evaluate_folders": ("evaluate", "evaluate_folders"),
}

if TYPE_CHECKING:  # pragma: no cover
    from .config import MedNCAConfig
    from .errors import MedNCAError
    from .evaluate import evaluate_folders
    from .model import MedNCA
    from .nca import NCALevel
    from .predict import predict_volume
    from .train import train


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'mednca' has no attribute {name!r}")
