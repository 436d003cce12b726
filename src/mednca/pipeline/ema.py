"""An exponential moving average (EMA) of a model's weights, the model that is validated and saved.

Training steps move the raw weights; after each step the average moves a little towards them::

    average <- decay_t * average + (1 - decay_t) * weights,   decay_t = min(decay, (1 + t) / (10 + t))

where ``t`` is the number of updates so far: the warm-up keeps the first averages close to the
current weights instead of to the initial ones. Averaged weights smooth out the noise of single
batches (OctreeNCA, Lemke et al. 2025, reports +4.3 Dice on prostate from it).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..nn.base import SegmentationModel


class WeightAverage:
    """The EMA of ``model``'s parameters (its buffers are used as they are).

    Args:
        model: The model trained; the average starts as a copy of its current weights.
        decay: Decay per update, in (0, 1).
    """

    def __init__(self, model: SegmentationModel, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the EMA decay must be in (0, 1), got {decay}")
        self.model = model
        self.decay = decay
        self.names = [name for name, _ in model.named_parameters()]
        self.average = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, t: int) -> None:
        """Move the average towards the model's weights; ``t``: updates before this one."""
        decay = min(self.decay, (1.0 + t) / (10.0 + t))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.model.parameters()], 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged parameters by name (what :meth:`load_state_dict` takes back)."""
        return {name: a.clone() for name, a in zip(self.names, self.average)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Set the average to ``state`` (every parameter name must be there)."""
        missing = [name for name in self.names if name not in state]
        if missing:
            raise KeyError(f"the averaged weights lack {', '.join(missing[:3])}")
        for name, a in zip(self.names, self.average):
            a.copy_(state[name])

    def reset(self) -> None:
        """Restart the average at the model's current weights."""
        self.load_state_dict(dict(self.model.named_parameters()))

    @contextmanager
    def applied(self) -> Iterator[SegmentationModel]:
        """Within the block the model holds the averaged weights; the raw ones come back after."""
        params = list(self.model.parameters())
        raw = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, a in zip(params, self.average):
                p.copy_(a)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for p, r in zip(params, raw):
                    p.copy_(r)
