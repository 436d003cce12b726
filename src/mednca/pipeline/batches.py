"""Which slices each training step sees, and at which learning rate: deterministic functions of
the seed, the epoch and the process's rank (so a resumed or distributed run repeats them exactly)."""

from __future__ import annotations

import math

import torch

from ..config import MedNCAConfig
from ..data.slices import SliceData


def epoch_order(data: SliceData, config: MedNCAConfig, seed: int, epoch: int) -> torch.Tensor:
    """Slice indices of one epoch, a deterministic function of (seed, epoch).

    Slices without foreground are kept with probability ``empty_slice_prob``.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    keep = data.foreground() | (torch.rand(len(data), generator=g) < config.empty_slice_prob)
    idx = keep.nonzero().squeeze(1)
    idx = idx[torch.randperm(len(idx), generator=g)]
    n_batches = config.batches_per_epoch or max(1, len(idx) // config.batch_size)
    need = n_batches * config.batch_size
    if need > len(idx):  # repeat the permutation to fill a fixed-length epoch
        idx = idx.repeat(math.ceil(need / len(idx)))
    return idx[:need]


def shard_order(order: torch.Tensor, batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s part of an epoch order: every ``world_size``-th batch, from batch ``rank``.

    All ranks get the same number of whole batches (the last ``n_batches % world_size`` batches
    are dropped; an epoch of fewer batches than ranks is repeated until every rank has one), so
    step ``k`` of all ranks together covers batches ``k*world_size ... k*world_size+world_size-1``.
    """
    batches = order.view(-1, batch_size)  # (n_batches, batch_size)
    if len(batches) < world_size:
        batches = batches.repeat(math.ceil(world_size / len(batches)), 1)
    steps = len(batches) // world_size
    return batches[:steps * world_size][rank::world_size].reshape(-1)


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s generator (fire masks, patch positions): ``seed`` on rank 0."""
    return seed + 1_000_003 * rank


def lr_at(config: MedNCAConfig, step: int) -> float:
    """Learning rate of batch ``step``: linear warm-up, then exponential decay per batch."""
    warm = min(1.0, (step + 1) / config.warmup_batches) if config.warmup_batches else 1.0
    return config.lr * warm * config.lr_gamma ** step


def cooldown_factor(fraction: float, progress: float) -> float:
    """Learning-rate factor at ``progress`` (0 to 1) through a session whose last ``fraction``
    cools down linearly to 0 (``config.lr_cooldown``; 1 everywhere when ``fraction`` is 0)."""
    if fraction <= 0:
        return 1.0
    return min(1.0, max(0.0, (1.0 - progress) / fraction))
