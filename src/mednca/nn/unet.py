"""UNet baselines that train and predict through the same pipeline as Med-NCA.

``config.model`` picks the network (:func:`build_model`):

* ``"mednca"``: :class:`~mednca.nn.model.MedNCA` (the default).
* ``"unet"``: the paper's baseline, a classic 2D UNet with 5 levels and 64 base channels
  (64-128-256-512-1024 features, ~31.1 M parameters, like the ``unet`` package's ``UNet2D``).
* ``"unet-small"``: the same architecture with features 4-4-8-16-32 (MONAI's default
  ``BasicUNet`` widths divided by 8), ~31 k parameters: about the size of a 16-channel Med-NCA
  (~26 k), for a size-matched comparison.

Both are MONAI's :class:`monai.networks.nets.BasicUNet` (two 3x3 conv + batch norm + LeakyReLU
per level, max pooling down, transposed convolutions up, skip connections), imported only when a
UNet is built. Of the config's fields a UNet uses the data and training ones (``image_size``,
``axis``, ``batch_size``, ``lr`` ...); the NCA fields (``channels``, ``steps``, ``fire_rate``,
``patch_size`` ...) are ignored.

Unlike Med-NCA, a UNet trains on whole slices: ``model(images, labels)`` returns the logits and
labels of the whole image, not of a patch. It is deterministic: ``predict_proba`` ignores
``ensemble`` and its std is zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import MedNCAConfig
from ..errors import ConfigError
from .base import SegmentationModel

#: BasicUNet features (5 levels + the last up-sampling block) of each UNet model type.
UNET_FEATURES: dict[str, tuple[int, int, int, int, int, int]] = {
    "unet": (64, 128, 256, 512, 1024, 64),
    "unet-small": (4, 4, 8, 16, 32, 4),
}
#: Smallest image side a UNet takes (four 2x poolings down to one pixel).
MIN_UNET_SIDE = 16


class UNetBaseline(SegmentationModel):
    """A 2D UNet with :class:`~mednca.nn.model.MedNCA`'s interface (forward, predict_proba, save/load).

    Args:
        config: A config with ``model`` ``"unet"`` or ``"unet-small"`` (default: ``"unet"``).
        generator: Source of the initial weights. The MONAI constructor runs with torch's CPU
            generator seeded by one number drawn from it, inside :func:`torch.random.fork_rng`,
            so the same generator state gives the same weights and the global random state is
            left as it was. Default: torch's global generator.
    """

    MODEL_TYPES = tuple(UNET_FEATURES)

    def __init__(self, config: MedNCAConfig | None = None, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MedNCAConfig(model="unet")
        if self.config.model not in UNET_FEATURES:
            raise ConfigError(f"UNetBaseline needs config.model in {tuple(UNET_FEATURES)}, "
                              f"got {self.config.model!r}")
        from monai.networks.nets import BasicUNet

        def make() -> nn.Module:
            return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1,
                             features=UNET_FEATURES[self.config.model], norm="batch")

        if generator is None:
            self.net = make()
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):  # restores the CPU generator afterwards
                torch.default_generator.manual_seed(seed)  # the CPU generator only (init runs on CPU)
                self.net = make()

    def _check(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got {tuple(images.shape)}")
        if min(images.shape[-2:]) < MIN_UNET_SIDE:
            raise ValueError(f"a UNet needs image sides >= {MIN_UNET_SIDE}, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")

    def forward(self, images: Tensor, labels: Tensor | None = None, *,
                generator: torch.Generator | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Segment images.

        Args:
            images: (B, 1, H, W) images, H and W >= 16.
            labels: Optional (B, 1, H, W) binary labels (training). A UNet trains on the whole
                slice, so they are returned unchanged beside the logits.
            generator: Unused (a UNet has no randomness); accepted for MedNCA's interface.

        Returns:
            (B, 1, H, W) logits, or with ``labels`` the tuple ``(logits, labels)`` of the whole image.
        """
        self._check(images)
        logits = self.net(images)
        if labels is None:
            return logits
        if labels.shape != images.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must match images {tuple(images.shape)}")
        return logits, labels

    @torch.no_grad()
    def predict_proba(self, images: Tensor, ensemble: int = 1,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Foreground probabilities. The network is deterministic: one pass whatever ``ensemble``.

        Returns:
            (mean, std): the (B, 1, H, W) sigmoid probability and zeros of the same shape.
        """
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        prob = torch.sigmoid(self(images))
        return prob, torch.zeros_like(prob)
