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


class NCALevel(nn.Module):
    """A BackboneNCA level (Kalkhof et al. 2023).

    Args:
        channels: Cell state channels C.
        hidden: Hidden units of the per-cell update network.
        fire_rate: Probability in [0, 1] that a cell applies its update in a step.
    """

    def __init__(self, channels: int, hidden: int = 128, fire_rate: float = 0.5) -> None:
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
        with torch.no_grad():
            self.fc1.weight.zero_()

    def perceive(self, x: Tensor) -> Tensor:
        """(B, C, H, W) state -> (B, 3C, H, W): the cell itself and its two learned 3x3 views."""
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        # Both perception convs as one conv with stacked filters (same math, one pass).
        weight = torch.cat((self.p0.weight, self.p1.weight), 0)  # (2C, C, 3, 3)
        bias = torch.cat((self.p0.bias, self.p1.bias), 0)  # (2C,)
        return torch.cat((x, F.conv2d(padded, weight, bias)), 1)

    def update(self, x: Tensor) -> Tensor:
        """(B, C, H, W) state -> (B, C, H, W) proposed residual update of every cell."""
        return self.fc1(F.relu(self.fc0(self.perceive(x))))

    def fire_mask(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 1, H, W) mask in x's dtype: 1 where a cell fires (probability ``fire_rate``)."""
        b, _, h, w = x.shape
        noise = torch.rand((b, 1, h, w), generator=generator, device=x.device, dtype=x.dtype)
        return (noise < self.fire_rate).to(x.dtype)

    def step(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One stochastic step; channel 0 (the image) is kept as it was."""
        mask = self.fire_mask(x, generator)
        if not torch.is_grad_enabled():
            return self.step_sparse(x, mask)
        x_new = x + self.update(x) * mask
        return torch.cat((x[:, :1], x_new[:, 1:]), 1)

    def step_sparse(self, x: Tensor, mask: Tensor, chunk: int = 4096) -> Tensor:
        """The same step for inference, computing the update only for cells that fire.

        Gathers the perception vectors of firing cells, runs the per-cell network on them in
        cache-sized chunks, and scatters the result back: same math as :meth:`step`, about half
        the work at fire rate 0.5 and far less memory traffic.

        Args:
            x: (B, C, H, W) state.
            mask: (B, 1, H, W) fire mask from :meth:`fire_mask`.
            chunk: Cells per matrix product.
        """
        b, c, h, w = x.shape
        feats = self.perceive(x).permute(0, 2, 3, 1).reshape(-1, 3 * c)  # (BHW, 3C)
        fired = mask.reshape(-1).nonzero().squeeze(1)  # (F,)
        feats = feats.index_select(0, fired)  # (F, 3C)
        w0 = self.fc0.weight.flatten(1).t()  # (3C, hidden)
        w1 = self.fc1.weight.flatten(1).t()  # (hidden, C)
        dx = x.new_empty((feats.shape[0], c))  # (F, C)
        for s in range(0, feats.shape[0], chunk):
            hidden = torch.addmm(self.fc0.bias, feats[s:s + chunk], w0).relu_()
            torch.mm(hidden, w1, out=dx[s:s + chunk])
        dx[:, 0] = 0  # channel 0 stays the image
        out = x.permute(0, 2, 3, 1).reshape(-1, c).clone()  # (BHW, C)
        out.index_add_(0, fired, dx)
        return out.view(b, h, w, c).permute(0, 3, 1, 2).contiguous()

    def forward(self, x: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """Run ``steps`` steps on a (B, C, H, W) state (H, W >= 2) and return the new state."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected a (B, {self.channels}, H, W) state, got {tuple(x.shape)}")
        for _ in range(steps):
            x = self.step(x, generator)
        return x
