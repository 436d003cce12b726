"""Random training augmentation of 2D slices: sample the parameters, then apply them deterministically.

Each slice of a batch, with probability ``prob``, is flipped left-right (half of the time),
rotated by up to :data:`MAX_ROTATION_DEG`, zoomed by a factor drawn uniformly from
``[1 - max_scale, 1 + max_scale]`` (default :data:`MAX_SCALE`; the config's ``augment_scale``) and has
its intensities raised to a random power (gamma, ``exp`` of up to ``max_log_gamma`` in log, default
:data:`MAX_LOG_GAMMA`; the config's ``augment_gamma``): the
variation between scanners and patients that 30 training cases do not cover. The label gets the
same spatial change (interpolated, then thresholded at 0.5). Optionally (``max_log_contrast`` > 0,
the config's ``augment_contrast``) the labelled structure is also made brighter or darker against
its surroundings: the image is multiplied by ``1 + (c - 1) m``, ``m`` the moved label blurred by a
Gaussian of :data:`CONTRAST_SIGMA` pixels, ``c = exp(u)`` with ``u`` uniform in
``[-max_log_contrast, max_log_contrast]`` (before the gamma change). All randomness comes from the
generator given, so a run is reproducible and resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import FLOAT_RANGES, MedNCAConfig

MAX_ROTATION_DEG = 15.0
#: Default zoom range: factors in [1 - MAX_SCALE, 1 + MAX_SCALE] (the config's ``augment_scale``).
MAX_SCALE = MedNCAConfig.augment_scale
#: Largest zoom range accepted (zoom factors stay >= 0.25).
MAX_SCALE_LIMIT = FLOAT_RANGES["augment_scale"][1]
#: Default intensity range: gamma in [exp(-MAX_LOG_GAMMA), exp(MAX_LOG_GAMMA)] (the config's ``augment_gamma``).
MAX_LOG_GAMMA = MedNCAConfig.augment_gamma
#: Largest gamma range accepted.
MAX_LOG_GAMMA_LIMIT = FLOAT_RANGES["augment_gamma"][1]
#: Largest foreground contrast range accepted (the config's ``augment_contrast``).
MAX_LOG_CONTRAST_LIMIT = FLOAT_RANGES["augment_contrast"][1]
#: Standard deviation, in pixels of the training slice, of the blur that turns a label into the
#: weight map of the foreground contrast change (a soft edge, not a step at the label's border).
CONTRAST_SIGMA = 2.0


@dataclass(frozen=True)
class Augmentation:
    """Per-slice parameters of one batch's augmentation, each a (B,) tensor.

    Attributes:
        apply: Whether the slice is augmented at all.
        flip: Whether it is flipped left-right (along W).
        angle: Rotation in radians.
        scale: Zoom factor (> 1 enlarges the anatomy).
        gamma: Intensity exponent (images are in [0, 1]).
        contrast: Brightness factor of the labelled structure against its surroundings, or
            ``None`` (no change, and nothing drawn for it).
    """

    apply: Tensor
    flip: Tensor
    angle: Tensor
    scale: Tensor
    gamma: Tensor
    contrast: Tensor | None = None


def sample_augmentation(batch: int, prob: float, generator: torch.Generator, *,
                        max_scale: float = MAX_SCALE, max_log_gamma: float = MAX_LOG_GAMMA,
                        max_log_contrast: float = 0.0) -> Augmentation:
    """Draw the parameters for ``batch`` slices (always the same number of draws, whatever ``prob``).

    ``max_scale`` in [0, :data:`MAX_SCALE_LIMIT`]: zoom factors are uniform in ``[1 - max_scale, 1 + max_scale]``.
    ``max_log_gamma`` in [0, :data:`MAX_LOG_GAMMA_LIMIT`]: log gamma is uniform in ``[-max_log_gamma, max_log_gamma]``.
    ``max_log_contrast`` in [0, :data:`MAX_LOG_CONTRAST_LIMIT`]: the log of the foreground's
    brightness factor is uniform in ``[-max_log_contrast, max_log_contrast]``; 0 draws nothing for it
    (so the other parameters are drawn exactly as without the option).
    """
    if not 0.0 <= max_scale <= MAX_SCALE_LIMIT:
        raise ValueError(f"max_scale must be in [0, {MAX_SCALE_LIMIT}], got {max_scale!r}")
    if not 0.0 <= max_log_gamma <= MAX_LOG_GAMMA_LIMIT:
        raise ValueError(f"max_log_gamma must be in [0, {MAX_LOG_GAMMA_LIMIT}], got {max_log_gamma!r}")
    if not 0.0 <= max_log_contrast <= MAX_LOG_CONTRAST_LIMIT:
        raise ValueError(f"max_log_contrast must be in [0, {MAX_LOG_CONTRAST_LIMIT}], got {max_log_contrast!r}")
    device = generator.device
    u = torch.rand(5, batch, generator=generator, device=device)
    contrast = None
    if max_log_contrast > 0:
        contrast = torch.exp((2 * torch.rand(batch, generator=generator, device=device) - 1) * max_log_contrast)
    return Augmentation(
        apply=u[0] < prob,
        flip=u[1] < 0.5,
        angle=(2 * u[2] - 1) * math.radians(MAX_ROTATION_DEG),
        scale=1.0 + (2 * u[3] - 1) * max_scale,
        gamma=torch.exp((2 * u[4] - 1) * max_log_gamma),
        contrast=contrast,
    )


def blur(maps: Tensor, sigma: float) -> Tensor:
    """(B, 1, H, W) maps smoothed by a separable Gaussian of ``sigma`` pixels (zero padding)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.conv2d(maps, kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))


def change_contrast(images: Tensor, labels: Tensor, factor: Tensor) -> Tensor:
    """(B, 1, H, W) images in [0, 1] with the structure in ``labels`` (B, 1, H, W) made ``factor``
    (B,) times as bright, fading to unchanged over :data:`CONTRAST_SIGMA` pixels; clipped to [0, 1]."""
    weight = blur(labels.to(images.dtype), CONTRAST_SIGMA)
    gain = 1.0 + (factor.view(-1, 1, 1, 1).to(images.dtype) - 1.0) * weight
    return (images * gain).clamp(0.0, 1.0)


def apply_augmentation(images: Tensor, labels: Tensor, aug: Augmentation) -> tuple[Tensor, Tensor]:
    """Apply ``aug`` to (B, 1, H, W) images in [0, 1] and their (B, 1, H, W) binary labels.

    Slices with ``aug.apply`` False come back unchanged.
    """
    if not bool(aug.apply.any()):
        return images, labels
    dtype = images.dtype
    cos, sin = torch.cos(aug.angle) / aug.scale, torch.sin(aug.angle) / aug.scale
    sign = torch.where(aug.flip, -1.0, 1.0).to(cos)
    zero = torch.zeros_like(cos)
    # output -> input sampling grid: rotation and zoom, then the flip of the input's x axis
    theta = torch.stack([torch.stack([cos * sign, -sin * sign, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1).to(dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    moved_labels = (F.grid_sample(labels, grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False) > 0.5).to(labels.dtype)
    moved = moved.clamp(0.0, 1.0)
    if aug.contrast is not None:
        moved = change_contrast(moved, moved_labels, aug.contrast)
    moved = moved ** aug.gamma.view(-1, 1, 1, 1).to(dtype)
    keep = aug.apply.view(-1, 1, 1, 1)
    return torch.where(keep, moved, images), torch.where(keep, moved_labels, labels)


def augment_batch(images: Tensor, labels: Tensor, prob: float, generator: torch.Generator, *,
                  max_scale: float = MAX_SCALE, max_log_gamma: float = MAX_LOG_GAMMA,
                  max_log_contrast: float = 0.0) -> tuple[Tensor, Tensor]:
    """:func:`sample_augmentation` then :func:`apply_augmentation`; nothing is drawn if ``prob`` is 0."""
    if prob <= 0:
        return images, labels
    aug = sample_augmentation(len(images), prob, generator, max_scale=max_scale, max_log_gamma=max_log_gamma,
                              max_log_contrast=max_log_contrast)
    return apply_augmentation(images, labels, aug)
