"""mednca: Med-NCA medical image segmentation with Neural Cellular Automata, fast on plain CPUs.

>>> from mednca import MedNCA, MedNCAConfig, load_model
>>> model = MedNCA(MedNCAConfig.preset("hippocampus"))
>>> trained = load_model("hippocampus")  # a model shipped in the package (mednca models)

The layers, bottom up (docs/architecture.md): ``config``/``checkpoint``/``runtime`` ->
``nn`` (the networks) and ``data`` (cases, volumes, slices, run folders) -> ``pipeline`` (train,
predict, evaluate) -> ``experiments`` and ``edge`` -> ``web`` (``mednca serve``) -> ``cli``.

The public names are imported lazily so that ``import mednca`` (and ``mednca --help``) does not
load torch until a model is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .version import __version__

__all__ = ["MedNCA", "MedNCAConfig", "NCALevel", "UNetBaseline", "MedNCAError", "build_model", "load_model",
           "train", "predict_volume", "predict_file", "evaluate_folders", "model_card", "shipped_names",
           "__version__"]

_LAZY = {
    "MedNCA": "nn.model",
    "MedNCAConfig": "config",
    "NCALevel": "nn.level",
    "UNetBaseline": "nn.unet",
    "MedNCAError": "errors",
    "build_model": "nn.build",
    "load_model": "nn.build",
    "train": "pipeline.train",
    "predict_volume": "pipeline.predict",
    "predict_file": "pipeline.predict",
    "model_card": "nn.shipped",
    "shipped_names": "nn.shipped",
    "evaluate_folders": "pipeline.evaluate",
}

if TYPE_CHECKING:  # pragma: no cover
    from .config import MedNCAConfig
    from .errors import MedNCAError
    from .nn.build import build_model, load_model
    from .nn.level import NCALevel
    from .nn.model import MedNCA
    from .nn.unet import UNetBaseline
    from .pipeline.evaluate import evaluate_folders
    from .nn.shipped import model_card, shipped_names
    from .pipeline.predict import predict_file, predict_volume
    from .pipeline.train import train


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mednca' has no attribute {name!r}")
