"""The base class every segmentation model of mednca shares: config, size, save and load."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import read_model_file, write_model_file
from ..config import MedNCAConfig
from ..errors import CheckpointError


class SegmentationModel(nn.Module):
    """A 2D slice segmentation network built from a :class:`MedNCAConfig`.

    Subclasses (:class:`~mednca.nn.model.MedNCA`, :class:`~mednca.nn.unet.UNetBaseline`) set
    :attr:`MODEL_TYPES` and implement ``forward(images, labels=None, *, generator=None)`` and
    :meth:`predict_proba`. Persistence is one safetensors file holding weights, config and
    package version (:mod:`mednca.checkpoint`); loading never unpickles.
    """

    #: The values of ``config.model`` this class builds.
    MODEL_TYPES: tuple[str, ...] = ()

    config: MedNCAConfig

    def num_parameters(self) -> int:
        """Trainable parameters (buffers such as batch-norm statistics are not counted)."""
        return sum(p.numel() for p in self.parameters())

    def save(self, path: str | Path, **metadata: str) -> Path:
        """Write weights + config + package version to one safetensors file (atomically)."""
        return write_model_file(path, self.config.to_dict(), self.state_dict(), metadata)

    @classmethod
    def load(cls, path: str | Path) -> "SegmentationModel":
        """Load a checkpoint file, or a run folder's best (else last) checkpoint, in eval mode.

        Raises:
            CheckpointError: Unreadable, incompatible, or holding another kind of model (load
                any model with :func:`mednca.load_model`).
        """
        config, tensors, path = read_model_file(path)
        if config.model not in cls.MODEL_TYPES:
            raise CheckpointError(f"{path} holds a {config.model!r} model, not a {cls.__name__}; "
                                  "load it with mednca.load_model")
        return cls(config).restore(tensors, path)

    def restore(self, tensors: dict[str, Tensor], source: str | Path = "checkpoint") -> "SegmentationModel":
        """Load ``tensors`` (a state dict read from ``source``) and switch to eval mode."""
        try:
            self.load_state_dict(tensors)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0].rstrip(":")
            raise CheckpointError(f"{source}: weights do not fit the config ({first})") from exc
        return self.eval()

    @torch.no_grad()
    def predict_proba(self, images: Tensor, ensemble: int = 1,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(B, 1, H, W) images -> (mean, std) foreground probabilities, each (B, 1, H, W)."""
        raise NotImplementedError
