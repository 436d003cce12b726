"""Training loss: binary cross-entropy plus soft Dice, on logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def soft_dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice over the whole batch; logits and target (B, 1, H, W)."""
    prob = logits.sigmoid().flatten()
    target = target.flatten()
    inter = (prob * target).sum()
    return 1.0 - (2.0 * inter + smooth) / (prob.sum() + target.sum() + smooth)


def dice_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """BCE (mean over pixels) + soft Dice loss, the Med-NCA training loss."""
    return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)
