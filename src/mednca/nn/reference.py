"""The plain reference Med-NCA: the readable implementation the fast one is checked against.

Written the way the growing-NCA papers (and the Med-NCA authors' BackboneNCA) write an NCA:
every step runs the dense perception (two 3x3 convs over every cell), the per-cell network on
every cell, and multiplies the update by a stochastic fire mask; autograd does the rest. Nothing
is fused, gathered, composed or checkpointed.

:class:`PlainMedNCA` draws the same random numbers as :class:`mednca.nn.model.MedNCA` in the same
order (level-1 fire masks, the patch origins, level-2 fire masks), so with the same weights
(:meth:`PlainMedNCA.from_mednca`) and the same seeded ``torch.Generator`` both give the same
outputs and gradients up to float rounding. The tests and the benchmark
(:mod:`mednca.experiments.bench`) compare the fused steps of :mod:`mednca.nn.steps` against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MedNCAConfig
from .model import MedNCA

__all__ = ["PlainLevel", "PlainMedNCA", "plain_name", "mednca_to_plain_state"]


class PlainLevel(nn.Module):
    """One Med-NCA level written straightforwardly, in the authors' style (BackboneNCA).

    Two 3x3 reflect-padded perception convs, concat with the state, a per-cell network as
    ``nn.Linear`` on NHWC (3C -> hidden, ReLU, hidden -> C without bias), a dense update of every
    cell multiplied by the fire mask, and channel 0 reset to the image.

    Args:
        channels: State channels C (channel 0 is the image).
        hidden: Width of the per-cell network's hidden layer.
        fire_rate: Probability that a cell applies its update in a step.
    """

    def __init__(self, channels: int, hidden: int = 128, fire_rate: float = 0.5) -> None:
        super().__init__()
        self.channels = channels
        self.fire_rate = fire_rate
        self.p0 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.p1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.fc0 = nn.Linear(3 * channels, hidden)
        self.fc1 = nn.Linear(hidden, channels, bias=False)
        with torch.no_grad():
            self.fc1.weight.zero_()

    def update(self, x: Tensor) -> Tensor:
        """(B, C, H, W) state -> (B, C, H, W) proposed update of every cell."""
        y = torch.cat((x, self.p0(x), self.p1(x)), 1).permute(0, 2, 3, 1)  # (B, H, W, 3C)
        dx = self.fc1(F.relu(self.fc0(y)))  # (B, H, W, C)
        return dx.permute(0, 3, 1, 2)

    def forward(self, x: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """Run ``steps`` steps on a (B, C, H, W) state; returns the new (B, C, H, W) state.

        Each step draws one (B, 1, H, W) uniform fire mask from ``generator``.
        """
        image = x[:, :1]
        for _ in range(steps):
            b, _, h, w = x.shape
            mask = (torch.rand((b, 1, h, w), generator=generator, device=x.device) < self.fire_rate).to(x.dtype)
            x = x + self.update(x) * mask
            x = torch.cat((image, x[:, 1:]), 1)  # channel 0 stays the image
        return x


class PlainMedNCA(nn.Module):
    """A plain PyTorch Med-NCA: the reference :class:`mednca.nn.model.MedNCA` is checked and timed against.

    Same math, same random-number calls in the same order, so with the same weights and the same
    seeded generator both give the same outputs up to float rounding. Load weights with
    :meth:`from_mednca`.
    """

    def __init__(self, config: MedNCAConfig) -> None:
        super().__init__()
        self.config = config
        self.levels = nn.ModuleList(PlainLevel(config.channels, config.hidden, config.fire_rate) for _ in range(2))

    @classmethod
    def from_mednca(cls, model: MedNCA) -> "PlainMedNCA":
        """A plain model with the config and weights of a :class:`MedNCA`."""
        plain = cls(model.config)
        plain.load_state_dict(mednca_to_plain_state(model.state_dict()))
        return plain

    def forward(self, images: Tensor, labels: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """(B, 1, H, W) images -> (B, 1, H, W) logits; with (B, 1, H, W) ``labels`` (training),
        level 2 runs on one (P, P) patch per sample and this returns ((B, 1, P, P) logits,
        (B, 1, P, P) label patches), P = ``config.patch_size``."""
        c = self.config
        s = c.scale
        b, _, h, w = images.shape
        small = F.avg_pool2d(images, s)
        x = torch.cat((small, small.new_zeros((b, c.channels - 1, h // s, w // s))), 1)
        x = self.levels[0](x, c.steps, generator)
        x = F.interpolate(x, scale_factor=s, mode="nearest")
        x = torch.cat((images, x[:, 1:]), 1)
        if labels is None:
            return self.levels[1](x, c.steps, generator)[:, 1:2]
        x, labels_p = self._patches(x, labels, generator)
        return self.levels[1](x, c.steps, generator)[:, 1:2], labels_p

    def _patches(self, x: Tensor, labels: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """One (P, P) patch per sample of the (B, C, H, W) state and the (B, 1, H, W) labels, at
        random origins, or with probability ``fg_patch_prob`` centred on a random foreground pixel
        (the random calls of :class:`MedNCA`, in its order)."""
        c = self.config
        p = c.patch_size
        b, _, h, w = x.shape
        rows = torch.randint(0, h - p + 1, (b,), generator=generator)
        cols = torch.randint(0, w - p + 1, (b,), generator=generator)
        if c.fg_patch_prob > 0:
            use_fg = torch.rand((b,), generator=generator) < c.fg_patch_prob
            pick = torch.rand((b,), generator=generator)
            for i in range(b):
                fg = torch.nonzero(labels[i, 0] > 0.5)
                if use_fg[i] and len(fg):
                    centre = fg[min(int(pick[i] * len(fg)), len(fg) - 1)]
                    rows[i] = (centre[0] - p // 2).clamp(0, h - p)
                    cols[i] = (centre[1] - p // 2).clamp(0, w - p)
        origins = list(zip(rows.tolist(), cols.tolist()))
        return (torch.stack([x[i, :, r:r + p, q:q + p] for i, (r, q) in enumerate(origins)]),
                torch.stack([labels[i, :, r:r + p, q:q + p] for i, (r, q) in enumerate(origins)]))


def plain_name(mednca_name: str) -> str:
    """``level1.fc0.weight`` (MedNCA) -> ``levels.0.fc0.weight`` (PlainMedNCA).

    Raises:
        ValueError: ``mednca_name`` is no parameter of a MedNCA level.
    """
    level, layer, param = mednca_name.split(".")
    index = {"level1": 0, "level2": 1}.get(level)
    if index is None or layer not in ("p0", "p1", "fc0", "fc1"):
        raise ValueError(f"unexpected MedNCA parameter {mednca_name!r}")
    return f"levels.{index}.{layer}.{param}"


def mednca_to_plain_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a MedNCA state dict to PlainMedNCA's (copies): the 1x1 convs ``fc0``/``fc1``, weights of
    shape (out, in, 1, 1), become ``nn.Linear`` weights of shape (out, in)."""
    out = {}
    for name, value in state.items():
        layer = name.split(".")[1] if name.count(".") == 2 else ""
        linear = layer in ("fc0", "fc1") and value.ndim == 4
        out[plain_name(name)] = value.flatten(1).clone() if linear else value.clone()
    return out
