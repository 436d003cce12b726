"""``MedNCA``: two NCA levels with separate weights, a coarse global one and a fine local one."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import MedNCAConfig
from .base import SegmentationModel
from .level import NCALevel

#: Runs one level's steps: ``(level, (B, C, h, w) state, level index 1 or 2) -> new state``.
RunLevel = Callable[[NCALevel, Tensor, int], Tensor]


class MedNCA(SegmentationModel):
    """Med-NCA (Kalkhof, González, Mukhopadhyay, IPMI 2023).

    Level 1 runs ``steps`` steps on the image down-scaled by ``scale`` (global context); its
    state is up-scaled (nearest), channel 0 is replaced by the full-resolution image, and level 2
    runs ``steps`` steps at full resolution: on the whole image at inference, on one random patch
    per sample in training (this is what keeps training memory low).

    Args:
        config: The model's configuration (see :class:`MedNCAConfig`).
        generator: Source of the initial weights (default: torch's global generator).
    """

    MODEL_TYPES = ("mednca",)

    def __init__(self, config: MedNCAConfig | None = None, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MedNCAConfig()
        c = self.config
        self.level1 = NCALevel(c.channels, c.hidden, c.fire_rate, generator)
        self.level2 = NCALevel(c.channels, c.hidden, c.fire_rate, generator)

    # -- pieces ----------------------------------------------------------------------------
    def seed(self, images: Tensor) -> Tensor:
        """(B, 1, H, W) images -> (B, C, H, W) initial state: channel 0 = image, the rest 0.

        Written with shape-generic ops only, so a traced export keeps batch and sides dynamic.
        """
        hidden = torch.zeros_like(images).expand(-1, self.config.channels - 1, -1, -1)
        return torch.cat((images, hidden), 1)

    def hand_over(self, small: Tensor, images: Tensor) -> Tensor:
        """Level 1's (B, C, H/s, W/s) state -> level 2's (B, C, H, W) start: up-scaled (nearest),
        channel 0 replaced by the full-resolution (B, 1, H, W) images."""
        state = F.interpolate(small, scale_factor=float(self.config.scale), mode="nearest")
        return torch.cat((images, state[:, 1:]), 1)

    def run_levels(self, images: Tensor, run_level: RunLevel) -> Tensor:
        """The two-level pipeline on whole images, with each level's steps run by ``run_level``.

        ``run_level(level, state, index)`` runs ``config.level_steps(index)`` steps of ``level`` (index 1 or 2)
        on a (B, C, h, w) state and returns the new state. :meth:`forward` runs the fused steps;
        the ONNX export runs dense steps with in-graph noise; the report records every step.

        Args:
            images: (B, 1, H, W) images, H and W multiples of ``scale``.

        Returns:
            (B, C, H, W) final level-2 state (channel 1 = segmentation logit).
        """
        small = run_level(self.level1, self.seed(F.avg_pool2d(images, self.config.scale)), 1)
        return run_level(self.level2, self.hand_over(small, images), 2)

    def level1_state(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 1, H, W) images -> (B, C, H/s, W/s) level-1 state, run on the down-scaled images."""
        small = F.avg_pool2d(images, self.config.scale)  # (B, 1, H/s, W/s)
        return self.level1(self.seed(small), self.config.level_steps(1), generator, self.config.grad_checkpoint)

    def global_state(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Level 1 on the down-scaled images, handed to full resolution.

        Returns:
            (B, C, H, W) state: level-1 state up-scaled (nearest), channel 0 = full-res image.
        """
        return self.hand_over(self.level1_state(images, generator), images)

    def patch_state(self, small: Tensor, images: Tensor, origins: Tensor) -> Tensor:
        """The window of :meth:`global_state` at ``origins``, read straight from the level-1 state.

        Same values as ``crop(global_state(images), origins, P)`` without building the
        full-resolution state (whose backward would fill a full-size gradient per sample).

        Args:
            small: (B, C, H/s, W/s) level-1 state from :meth:`level1_state`.
            images: (B, 1, H, W) full-resolution images.
            origins: (B, 2) top-left (row, col) of each sample's patch.

        Returns:
            (B, C, P, P) patch state, channels-last in memory; channel 0 = the image's patch.
        """
        s, p = self.config.scale, self.config.patch_size
        offsets = torch.arange(p, device=origins.device)
        rows = origins[:, :1] + offsets  # (B, P) full-res rows of each patch
        cols = origins[:, 1:] + offsets  # (B, P)
        batch = torch.arange(len(origins), device=origins.device)[:, None, None]
        r, c = rows[:, :, None], cols[:, None, :]
        hidden = small.permute(0, 2, 3, 1)[batch, r // s, c // s, 1:]  # (B, P, P, C-1): nearest up-scaling
        image = images[batch, 0, r, c]  # (B, P, P)
        return torch.cat((image[..., None], hidden), 3).permute(0, 3, 1, 2)

    def patch_origins(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 1, H, W) labels -> (B, 2) top-left (row, col) of one training patch per sample.

        With probability ``fg_patch_prob`` a patch is centred on a random foreground pixel
        (clamped to the image); otherwise its position is uniform.
        """
        b, _, h, w = labels.shape
        p = self.config.patch_size
        device = labels.device
        origins = torch.stack(
            (torch.randint(0, h - p + 1, (b,), generator=generator, device=device),
             torch.randint(0, w - p + 1, (b,), generator=generator, device=device)), 1)
        prob = self.config.fg_patch_prob
        if prob > 0:
            use_fg = torch.rand((b,), generator=generator, device=device) < prob
            pick = torch.rand((b,), generator=generator, device=device)
            for i in range(b):
                fg = torch.nonzero(labels[i, 0] > 0.5)  # (N, 2)
                if use_fg[i] and len(fg):
                    centre = fg[min(int(pick[i] * len(fg)), len(fg) - 1)]
                    origins[i, 0] = (centre[0] - p // 2).clamp(0, h - p)
                    origins[i, 1] = (centre[1] - p // 2).clamp(0, w - p)
        return origins

    @staticmethod
    def crop(x: Tensor, origins: Tensor, size: int) -> Tensor:
        """(B, C, H, W) -> (B, C, size, size): the window at ``origins[i]`` of each sample."""
        return torch.stack([x[i, :, r:r + size, c:c + size]
                            for i, (r, c) in enumerate(origins.tolist())])

    def _check(self, images: Tensor) -> None:
        c = self.config
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % c.scale or w % c.scale or min(h, w) < 2 * c.scale:
            raise ValueError(f"image sides must be multiples of scale={c.scale} and >= {2 * c.scale}, got {h}x{w}")

    # -- forward ---------------------------------------------------------------------------
    def forward(self, images: Tensor, labels: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> Tensor | tuple[Tensor, ...]:
        """Segment images.

        Args:
            images: (B, 1, H, W) images, H and W multiples of ``scale``.
            labels: Optional (B, 1, H, W) binary labels. Given, the model runs in training mode:
                level 2 on one random patch per sample.
            generator: Source of all randomness (fire masks, patch positions).

        Returns:
            (B, 1, H, W) logits of the whole image, or with ``labels`` a tuple
            ``(logits_p, labels_p)`` of (B, 1, P, P) patch logits and the same patch of labels,
            followed, when ``config.coarse_loss > 0``, by level 1's (B, 1, H/s, W/s) logits and
            the labels average-pooled to that grid (fractions in [0, 1]).
        """
        self._check(images)
        c = self.config
        if labels is None:  # level 1 checkpointed as in training (it matters only with gradients)
            return self.run_levels(images, lambda level, x, index: level(
                x, c.level_steps(index), generator, c.grad_checkpoint and index == 1))[:, 1:2]
        if labels.shape != images.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must match images {tuple(images.shape)}")
        p = self.config.patch_size
        small = self.level1_state(images, generator)  # (B, C, H/s, W/s)
        origins = self.patch_origins(labels, generator)
        state_p = self.patch_state(small, images, origins)  # (B, C, P, P)
        labels_p = self.crop(labels, origins, p)  # (B, 1, P, P)
        logits_p = self.level2(state_p, self.config.level_steps(2), generator, self.config.grad_checkpoint)[:, 1:2]
        if c.coarse_loss > 0:
            return logits_p, labels_p, small[:, 1:2], F.avg_pool2d(labels, c.scale)
        return logits_p, labels_p

    @torch.no_grad()
    def predict_proba(self, images: Tensor, ensemble: int = 1,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Foreground probabilities from ``ensemble`` stochastic passes.

        Returns:
            (mean, std): two (B, 1, H, W) tensors, the mean sigmoid probability and its
            per-pixel standard deviation over the passes (zeros when ``ensemble == 1``).
        """
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        probs = torch.stack([torch.sigmoid(self(images, generator=generator)) for _ in range(ensemble)])
        std = probs.std(0, unbiased=False) if ensemble > 1 else torch.zeros_like(probs[0])
        return probs.mean(0), std
