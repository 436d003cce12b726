"""One level of Med-NCA: the "BackboneNCA" update rule as small named pieces.

A step reads each cell's 3x3 neighbourhood (``perceive``), maps it through a per-cell network
(``update``), lets each cell apply that update with probability ``fire_rate`` (``fire_mask``),
and resets channel 0 to the image. The last layer starts at zero, so a fresh level is the
identity map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .steps import StepWeights, run_steps

#: Steps per gradient-checkpointing segment: the state is kept every this many steps, and the
#: steps in between are recomputed in backward. A step's intermediates (the padded state, the firing
#: cells' perception vectors and hidden activations) take ~4-7 states' memory (32-16 channels).
CHECKPOINT_SEGMENT = 4


class NCALevel(nn.Module):
    """A BackboneNCA level (Kalkhof et al. 2023).

    Args:
        channels: Cell state channels C.
        hidden: Hidden units of the per-cell update network.
        fire_rate: Probability in [0, 1] that a cell applies its update in a step.
        generator: Source of the initial weights (default: torch's global generator).
    """

    def __init__(self, channels: int, hidden: int = 128, fire_rate: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"channels must be >= 2, got {channels}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if not 0.0 <= fire_rate <= 1.0:
            raise ValueError(f"fire_rate must be in [0, 1], got {fire_rate}")
        self.channels = channels
        self.fire_rate = fire_rate
        # Two learned dense 3x3 perception filters; reflect padding is applied in perceive().
        self.p0 = nn.Conv2d(channels, channels, kernel_size=3)
        self.p1 = nn.Conv2d(channels, channels, kernel_size=3)
        self.fc0 = nn.Conv2d(3 * channels, hidden, kernel_size=1)
        self.fc1 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default conv initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from
        ``generator``; the last layer is set to zero, so a fresh level is the identity."""
        for conv in (self.p0, self.p1, self.fc0):
            bound = 1.0 / conv.weight[0].numel() ** 0.5
            conv.weight.uniform_(-bound, bound, generator=generator)
            conv.bias.uniform_(-bound, bound, generator=generator)
        self.fc1.weight.zero_()

    def perceive(self, x: Tensor) -> Tensor:
        """(B, C, H, W) state -> (B, 3C, H, W): the cell itself and its two learned 3x3 views."""
        return torch.cat((x, self.views(x)), 1)

    def packed_weights(self) -> StepWeights:
        """The weights as a step of :func:`mednca.nn.steps.run_steps` uses them, packed once per run
        of the level (not per step); differentiable.

        The perception filters' biases are folded into the first layer's bias (the first layer
        is linear in the views): ``w0 @ [x, conv(x) + bv, 1] == w0' @ [x, conv(x), 1]`` with
        ``w0'``'s bias column ``b0 + w0[:, C:3C] @ bv``; so a step's conv has no bias.

        Returns:
            :class:`~mednca.nn.steps.StepWeights`: both perception filters stacked (2C, C, 3, 3); the
            first layer with its folded bias as the last column (hidden, 3C + 1); the second layer
            (C, hidden) with row 0 (the image channel's update) zero.
        """
        c = self.channels
        wv, bv = self._filters()
        fc0 = self.fc0.weight.flatten(1)  # (hidden, 3C)
        w0 = torch.cat((fc0, (self.fc0.bias + fc0[:, c:] @ bv)[:, None]), 1)
        w1 = self.fc1.weight.flatten(1)
        w1 = torch.cat((w1.new_zeros((1, w1.shape[1])), w1[1:]), 0)  # row 0 zero: the image is never updated
        return StepWeights(wv, w0, w1)

    def _filters(self) -> tuple[Tensor, Tensor]:
        """Both perception filters stacked, (2C, C, 3, 3), and their biases, (2C,)."""
        return torch.cat((self.p0.weight, self.p1.weight), 0), torch.cat((self.p0.bias, self.p1.bias), 0)

    def views(self, x: Tensor) -> Tensor:
        """(B, C, H, W) state -> (B, 2C, H, W): the two learned 3x3 views, reflect padding."""
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), *self._filters())

    def update(self, x: Tensor) -> Tensor:
        """(B, C, H, W) state -> (B, C, H, W) proposed residual update of every cell."""
        return self.fc1(F.relu(self.fc0(self.perceive(x))))

    def _fires(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """(B*H*W,) bool: which cells of a (B, C, H, W) state fire this step (one uniform draw each)."""
        b, _, h, w = x.shape
        return torch.rand((b * h * w,), generator=generator, device=x.device, dtype=x.dtype) < self.fire_rate

    def fire_mask(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 1, H, W) mask in x's dtype: 1 where a cell fires (probability ``fire_rate``)."""
        b, _, h, w = x.shape
        return self._fires(x, generator).view(b, 1, h, w).to(x.dtype)

    def fire_indices(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(F,) indices of the firing cells in the flattened (B, H, W) grid of a (B, C, H, W) state:
        the cells where :meth:`fire_mask` (same generator state) is 1, without building the mask."""
        return self._fires(x, generator).nonzero().squeeze(1)

    @staticmethod
    def fired(mask: Tensor) -> Tensor:
        """(B, 1, H, W) fire mask -> (F,) indices of its firing cells in the flattened (B, H, W) grid."""
        return mask.reshape(-1).nonzero().squeeze(1)

    def step(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One stochastic step on a (B, C, H, W) state; channel 0 (the image) is kept as it was.

        The same as :meth:`step_dense` with :meth:`fire_mask` (same generator state), computing
        the update only for the firing cells (:func:`mednca.nn.steps.run_steps`); differentiable.
        """
        return self(x, 1, generator)

    def step_dense(self, x: Tensor, mask: Tensor) -> Tensor:
        """The plain reference step: update every cell, then mask. (B, C, H, W) -> same."""
        x_new = x + self.update(x) * mask
        return torch.cat((x[:, :1], x_new[:, 1:]), 1)

    def forward(self, x: Tensor, steps: int, generator: torch.Generator | None = None,
                checkpoint: bool = False) -> Tensor:
        """Run ``steps`` steps on a (B, C, H, W) state (H, W >= 2) and return the new state.

        Args:
            checkpoint: In training, keep only the state at every ``CHECKPOINT_SEGMENT``-th step
                for backward and recompute the steps in between then (gradient checkpointing):
                memory ~ steps / segment states plus one segment's intermediates instead of
                every step's intermediates (~4-7 states each), for about a third more compute.
        """
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected a (B, {self.channels}, H, W) state, got {tuple(x.shape)}")
        state = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C): channels-last for the whole level
        # the same random numbers as fire_mask(x) per step, in step order
        fired = (self.fire_indices(x, generator) for _ in range(steps))
        state = run_steps(state, self.packed_weights(), fired, CHECKPOINT_SEGMENT if checkpoint else None)
        return state.permute(0, 3, 1, 2).contiguous()
