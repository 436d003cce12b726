"""One frozen configuration for a Med-NCA run: model, data and training fields, with named presets.

A config is plain data: it round-trips through JSON (unknown keys are errors, so a typo never
passes silently) and travels inside every checkpoint, so a saved model rebuilds itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

_INTERPOLATIONS = ("linear", "cubic")
NORMALIZATIONS = ("minmax", "percentile")
#: Values of ``MedNCAConfig.model``: Med-NCA or one of the UNet baselines (see mednca.nn.unet).
MODEL_TYPES = ("mednca", "unet", "unet-small")


@dataclass(frozen=True)
class MedNCAConfig:
    """All settings of a Med-NCA model and of how it is trained.

    Model:
        channels: Cell state channels C (channel 0 = image, 1 = segmentation logit, rest hidden).
        hidden: Hidden units of the per-cell update network (1x1 conv 3C -> hidden -> C).
        steps: NCA steps S run by each of the two levels.
        scale: Down-scaling factor of level 1 (the image side divided by it must be an integer).
        fire_rate: Probability that a cell applies its update in a step (training and inference).
        image_size: In-plane side (pixels) every slice is resized to.
        patch_size: Side of the level-2 patch trained on per sample (level 2 sees the whole image
            at inference).
        grad_checkpoint: Keep the NCA state only every 4 steps for backward and recompute the
            steps in between then (training memory ~ steps / 4 states plus 4 steps'
            intermediates instead of every step's, ~4-7 states each; about a third more compute).
        model: The network: ``"mednca"`` (default), ``"unet"`` (the paper's 2D UNet baseline,
            5 levels, 64 base channels, ~31 M parameters) or ``"unet-small"`` (the same UNet
            with ~31 k parameters, about Med-NCA's size); see :mod:`mednca.nn.unet`. UNets
            train on whole slices and ignore the NCA fields (channels, hidden, steps, scale,
            fire_rate, patch_size, grad_checkpoint, val_ensemble); they need image_size >= 16.

    Data:
        axis: Volume axis the 2D slices are taken along (0, 1 or 2).
        channel: Channel of a 4D multi-modal image to use (e.g. prostate T2 = 0).
        label: ``None`` merges all foreground labels (label > 0, as the paper); an int keeps
            only that label value as foreground.
        interpolation: In-plane image resize, ``"linear"`` or ``"cubic"`` (labels use nearest).
        normalization: Per-slice intensity scaling to [0, 1]: ``"minmax"`` (the paper's code) or
            ``"percentile"`` (minimum to the 99th percentile, brighter pixels clipped to 1; for
            images where a few very bright pixels, e.g. urine in T2 MRI, squeeze the anatomy
            into a small part of the range).

    Training:
        batch_size: Slices per batch.
        lr: Adam learning rate.
        betas: Adam betas.
        lr_gamma: Exponential lr decay per batch (the paper: 0.9999).
        warmup_batches: Batches of linear lr warm-up (0 = none).
        epochs: Maximum number of epochs.
        batches_per_epoch: Batches per epoch; 0 means one pass over the training slices.
        fg_patch_prob: Probability that a training patch is centred on a foreground pixel
            (0 = uniform random patches, as the paper).
        empty_slice_prob: Probability weight of slices without foreground relative to slices
            with foreground when sampling a batch (1 = sample all slices uniformly).
        grad_clip: Max global gradient norm (0 = no clipping).
        val_ensemble: Stochastic passes averaged when computing validation Dice.

    name: The preset this config came from ("custom" otherwise); informative only.
    """

    # model
    channels: int = 16
    hidden: int = 128
    steps: int = 16
    scale: int = 4
    fire_rate: float = 0.5
    image_size: int = 64
    patch_size: int = 16
    grad_checkpoint: bool = False
    model: str = "mednca"
    # data
    axis: int = 2
    channel: int = 0
    label: int | None = None
    interpolation: str = "cubic"
    normalization: str = "minmax"
    # training
    batch_size: int = 32
    lr: float = 1.6e-3
    betas: tuple[float, float] = (0.5, 0.5)
    lr_gamma: float = 0.9999
    warmup_batches: int = 0
    epochs: int = 1000
    batches_per_epoch: int = 0
    fg_patch_prob: float = 0.0
    empty_slice_prob: float = 1.0
    grad_clip: float = 0.0
    val_ensemble: int = 1
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        _positive = ("channels", "hidden", "steps", "scale", "image_size", "patch_size",
                     "batch_size", "epochs", "val_ensemble")
        for name in _positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.channels < 2:
            raise ConfigError(f"channels must be >= 2 (image + logit), got {self.channels}")
        for fname in ("fire_rate", "lr", "lr_gamma", "fg_patch_prob", "empty_slice_prob", "grad_clip"):
            value = getattr(self, fname)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{fname} must be a finite number, got {value!r}")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2 or not all(
                isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0.0 <= self.fire_rate <= 1.0:
            raise ConfigError(f"fire_rate must be in [0, 1], got {self.fire_rate}")
        if self.image_size % self.scale:
            raise ConfigError(f"image_size {self.image_size} is not divisible by scale {self.scale}")
        if self.patch_size > self.image_size:
            raise ConfigError(f"patch_size {self.patch_size} exceeds image_size {self.image_size}")
        if self.axis not in (0, 1, 2):
            raise ConfigError(f"axis must be 0, 1 or 2, got {self.axis}")
        if self.channel < 0:
            raise ConfigError(f"channel must be >= 0, got {self.channel}")
        if self.label is not None and (isinstance(self.label, bool) or self.label < 1):
            raise ConfigError(f"label must be a positive label value or None, got {self.label}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.model not in MODEL_TYPES:
            raise ConfigError(f"model must be one of {MODEL_TYPES}, got {self.model!r}")
        if self.model != "mednca" and self.image_size < 16:
            raise ConfigError(f"a UNet (model={self.model!r}) needs image_size >= 16, got {self.image_size}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        for name in ("warmup_batches", "batches_per_epoch"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("fg_patch_prob", "empty_slice_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0, got {self.grad_clip}")

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MedNCAConfig":
        """A named preset with optional field overrides, e.g. ``preset("hippocampus", steps=32)``.

        Raises:
            ConfigError: Unknown preset name or invalid override.
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
        values = {**PRESETS[name], "name": name}
        return cls.from_dict({**values, **overrides})

    def replace(self, **overrides: Any) -> "MedNCAConfig":
        """A copy with some fields changed (validated like a new config)."""
        return self.from_dict({**self.to_dict(), **overrides})

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields."""
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MedNCAConfig":
        """Build from a dict; unknown keys raise :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(data)
        if isinstance(values.get("betas"), list):
            values["betas"] = tuple(values["betas"])
        try:
            return cls(**values)
        except TypeError as exc:  # wrong types that the checks above did not catch
            raise ConfigError(str(exc)) from exc

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "MedNCAConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict(data)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a ``key=value`` command-line override; the value is read as JSON when it can be.

    ``steps=32`` -> ``("steps", 32)``; ``betas=[0.9,0.99]`` -> a list; ``label=null`` -> None.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


#: Named presets. ``paper-*`` are the paper's settings (Kalkhof et al. 2023, the authors' code);
#: ``hippocampus`` and ``prostate`` keep the paper's model and data settings but use the training
#: recipe mednca found to converge fast and reliably on a CPU (README, "Training recipe"): Adam
#: betas (0.9, 0.99) instead of (0.5, 0.5), batch 16, half of the patches centred on foreground,
#: gradient-norm clipping, and a faster per-batch lr decay.
PRESETS: dict[str, dict[str, Any]] = {
    "hippocampus": dict(
        channels=16, hidden=128, steps=16, scale=4, fire_rate=0.5,
        image_size=64, patch_size=16, axis=2, interpolation="cubic",
        batch_size=16, lr=2e-3, betas=(0.9, 0.99), lr_gamma=0.99975,
        fg_patch_prob=0.5, grad_clip=1.0,
    ),
    "prostate": dict(
        channels=32, hidden=128, steps=16, scale=4, fire_rate=0.5,
        image_size=256, patch_size=64, axis=2, interpolation="cubic",
        batch_size=8, lr=2e-3, betas=(0.9, 0.99), lr_gamma=0.9995,
        fg_patch_prob=0.5, grad_clip=1.0, grad_checkpoint=True,
    ),
    "paper-hippocampus": dict(
        channels=16, hidden=128, steps=16, scale=4, fire_rate=0.5,
        image_size=64, patch_size=16, axis=2, interpolation="cubic",
        batch_size=32, lr=1.6e-3, betas=(0.5, 0.5), lr_gamma=0.9999,
    ),
    "paper-prostate": dict(
        channels=32, hidden=128, steps=16, scale=4, fire_rate=0.5,
        image_size=256, patch_size=64, axis=2, interpolation="cubic",
        batch_size=16, lr=1.6e-3, betas=(0.5, 0.5), lr_gamma=0.9999,
    ),
    "demo": dict(
        channels=16, hidden=64, steps=12, scale=4, fire_rate=0.5,
        image_size=32, patch_size=16, axis=2, interpolation="linear",
        batch_size=16, lr=2e-3, betas=(0.9, 0.99), lr_gamma=1.0,
        fg_patch_prob=0.5, grad_clip=1.0,
    ),
}
