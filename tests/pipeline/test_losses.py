"""mednca.pipeline.losses: soft Dice and BCE + soft Dice on logits."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mednca.pipeline.losses import dice_bce_loss, soft_dice_loss

BIG = 30.0  # a logit whose sigmoid is 1 - 1e-13


def test_soft_dice_is_zero_for_a_perfect_prediction_and_one_for_a_disjoint_one():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    perfect = torch.where(target > 0, BIG, -BIG)
    assert soft_dice_loss(perfect, target).item() < 1e-6
    disjoint = torch.where(target > 0, -BIG, BIG)
    # smooth 1 over 2 * 16 foreground and 2 * 48 predicted pixels: 1 - 1 / (32 + 96 + 1)
    assert math.isclose(soft_dice_loss(disjoint, target).item(), 1 - 1 / 129, rel_tol=1e-5)


def test_soft_dice_of_two_empty_masks_is_zero_thanks_to_the_smoothing():
    empty = torch.zeros(1, 1, 4, 4)
    assert soft_dice_loss(torch.full_like(empty, -BIG), empty).item() < 1e-6


def test_soft_dice_pools_the_whole_batch():
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2] = 1  # 8 foreground pixels, all in sample 0
    logits = torch.where(target > 0, BIG, -BIG)
    logits[1] = BIG  # sample 1 predicts 16 false-positive pixels
    expected = 1 - (2 * 8 + 1) / (24 + 8 + 1)
    assert math.isclose(soft_dice_loss(logits, target).item(), expected, rel_tol=1e-5)


def test_dice_bce_is_the_sum_of_mean_bce_and_soft_dice():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 5, 5, generator=g)
    target = (torch.rand(3, 1, 5, 5, generator=g) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(logits, target)
    assert torch.allclose(dice_bce_loss(logits, target), expected)
    # by hand: BCE of one pixel with logit 0 is log 2
    half = torch.zeros(1, 1, 1, 1)
    one = torch.ones(1, 1, 1, 1)
    assert math.isclose(dice_bce_loss(half, one).item(), math.log(2) + 1 - (2 * 0.5 + 1) / (0.5 + 1 + 1), rel_tol=1e-6)


def test_gradient_pushes_logits_towards_the_target():
    target = torch.tensor([[[[1.0, 0.0]]]])
    logits = torch.zeros(1, 1, 1, 2, requires_grad=True)
    dice_bce_loss(logits, target).backward()
    assert logits.grad[0, 0, 0, 0] < 0 < logits.grad[0, 0, 0, 1]
