"""Build the model a config names, or the model a checkpoint holds."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import read_model_file
from ..config import MODEL_TYPES, MedNCAConfig
from ..errors import ConfigError
from .base import SegmentationModel
from .model import MedNCA
from .shipped import is_shipped, shipped_checkpoint
from .unet import UNetBaseline


def build_model(config: MedNCAConfig, generator: torch.Generator | None = None) -> SegmentationModel:
    """The model ``config.model`` names: a :class:`MedNCA` or a :class:`UNetBaseline`.

    Args:
        config: The model's config.
        generator: Source of the initial weights (default: torch's global generator).
    """
    for cls in (MedNCA, UNetBaseline):
        if config.model in cls.MODEL_TYPES:
            return cls(config, generator=generator)
    raise ConfigError(f"unknown model {config.model!r}; choose one of: {', '.join(MODEL_TYPES)}")


def load_model(source: str | Path) -> SegmentationModel:
    """Rebuild a model (eval mode), whatever its type, from a checkpoint file, a run folder, or
    the name of a shipped model (``"hippocampus"``; see ``mednca models``).

    A name is a shipped model only when no file or folder of that name exists.

    Raises:
        CheckpointError: The file is missing, unreadable, from an incompatible version, or its
            weights do not fit its config; or a shipped model's file fails its checksum.
    """
    path = source
    if not Path(source).exists() and is_shipped(str(source)):
        path = shipped_checkpoint(str(source))
    config, tensors, path = read_model_file(path)
    return build_model(config).restore(tensors, path)
