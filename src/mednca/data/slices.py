"""Volumes <-> 2D slices: slice along an axis, resize in-plane, normalise per slice, and back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import MedNCAConfig
from .cases import Case
from .volumes import binarize, read_case, reorient

_MODES = {"linear": "bilinear", "cubic": "bicubic"}


#: Upper percentile of ``normalize(..., "percentile")``.
UPPER_PERCENTILE = 99.0
#: Percentiles mapped to 0 and 1 by ``normalize(..., "robust")``: the authors' prostate
#: preprocessing (min-max, z-score, then [0, 1] clipped at the 0.5th / 99.5th percentiles, which
#: is this affine map and clip).
ROBUST_PERCENTILES = (0.5, 99.5)


def normalize(images: Tensor, method: str = "minmax") -> Tensor:
    """Per-slice normalisation of (N, 1, H, W) images to [0, 1].

    Args:
        images: (N, 1, H, W) slices.
        method: ``"minmax"``: minimum -> 0, maximum -> 1 (as the paper's code).
            ``"percentile"``: minimum -> 0, the 99th percentile -> 1, brighter pixels clipped to 1.
            ``"robust"``: the 0.5th percentile -> 0, the 99.5th -> 1, clipped to [0, 1] (the
            authors' prostate preprocessing).

    Constant slices become all zeros.
    """
    flat = images.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1, 1)
    if method == "percentile":
        upper = torch.quantile(flat, UPPER_PERCENTILE / 100, dim=1).view(-1, 1, 1, 1)
        hi = torch.where(upper > lo, upper, hi)  # mostly-constant slices keep their maximum
    elif method == "robust":
        q = torch.quantile(flat, torch.tensor(ROBUST_PERCENTILES) / 100, dim=1)  # (2, N)
        lower, upper = q[0].view(-1, 1, 1, 1), q[1].view(-1, 1, 1, 1)
        keep = upper > lower  # mostly-constant slices keep their minimum and maximum
        lo, hi = torch.where(keep, lower, lo), torch.where(keep, upper, hi)
    elif method != "minmax":
        raise ValueError(f"unknown normalisation {method!r}; use 'minmax', 'percentile' or 'robust'")
    span = hi - lo
    out = torch.where(span > 0, (images - lo) / span.clamp_min(1e-12), torch.zeros_like(images))
    return out if method == "minmax" else out.clamp_(0.0, 1.0)


def image_slices(volume: np.ndarray, axis: int, size: int, interpolation: str = "cubic",
                 normalization: str = "minmax") -> Tensor:
    """(X, Y, Z) image -> (N, 1, size, size) float32 slices along ``axis``, resized, normalised
    (see :func:`normalize`)."""
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, axis, 0), dtype=np.float32))
    resized = F.interpolate(slices[:, None], size=(size, size), mode=_MODES[interpolation],
                            align_corners=False)
    return normalize(resized, normalization)


def label_slices(mask: np.ndarray, axis: int, size: int) -> Tensor:
    """(X, Y, Z) binary mask -> (N, 1, size, size) float32 {0, 1} slices (nearest resize)."""
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(mask, axis, 0), dtype=np.float32))
    return F.interpolate(slices[:, None], size=(size, size), mode="nearest-exact")


def to_volume(slices: Tensor, shape: Sequence[int], axis: int) -> np.ndarray:
    """(N, 1, S, S) per-slice maps -> (X, Y, Z) float32 volume on the original grid.

    In-plane resampling back to the volume's own size is bilinear, so probabilities stay smooth.
    """
    in_plane = [s for i, s in enumerate(shape) if i != axis]
    if slices.shape[0] != shape[axis]:
        raise ValueError(f"{slices.shape[0]} slices do not fit axis {axis} of shape {tuple(shape)}")
    resized = F.interpolate(slices.float(), size=tuple(in_plane), mode="bilinear", align_corners=False)
    return np.moveaxis(resized[:, 0].cpu().numpy(), 0, axis)


@dataclass
class SliceData:
    """All 2D slices of a set of cases, in memory.

    Attributes:
        images: (N, 1, S, S) normalised images.
        labels: (N, 1, S, S) binary labels.
        case_index: (N,) index into ``case_ids`` of each slice's case.
        case_ids: Case id of each case.
    """

    images: Tensor
    labels: Tensor
    case_index: Tensor
    case_ids: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]

    def foreground(self) -> Tensor:
        """(N,) bool: which slices contain foreground."""
        return self.labels.flatten(1).amax(1) > 0


def load_slices(cases: Sequence[Case], config: MedNCAConfig,
                progress: Callable[[int], None] | None = None) -> SliceData:
    """Read labelled cases and turn them into resized, normalised slices (each volume first
    reoriented to ``config.orientation`` when it is set).

    Raises:
        DataError: Any unreadable or inconsistent case (see :func:`read_case`).
    """
    images, labels, index = [], [], []
    for i, case in enumerate(cases):
        image, label = read_case(case)
        codes = config.orientation
        image.data = reorient(image.data, image.affine, codes)
        label.data = reorient(label.data, label.affine, codes)
        images.append(image_slices(image.data, config.axis, config.image_size, config.interpolation,
                                   config.normalization))
        labels.append(label_slices(binarize(label.data, config.label), config.axis, config.image_size))
        index.append(torch.full((images[-1].shape[0],), i, dtype=torch.long))
        if progress:
            progress(i + 1)
    if not images:
        return SliceData(torch.zeros(0, 1, config.image_size, config.image_size),
                         torch.zeros(0, 1, config.image_size, config.image_size),
                         torch.zeros(0, dtype=torch.long), [])
    return SliceData(torch.cat(images), torch.cat(labels), torch.cat(index), [c.case_id for c in cases])
