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
NORMALIZATIONS = ("minmax", "percentile", "robust")
#: Values of ``MedNCAConfig.model``: Med-NCA or one of the UNet baselines (see mednca.nn.unet).
MODEL_TYPES = ("mednca", "unet", "unet-small")

#: (minimum, maximum) of every integer field (maximum None: unbounded). The upper bounds keep a
#: config read from a file (a checkpoint, an ONNX model's metadata, a config.json) from asking
#: for unbounded time or memory: the paper's largest model has 32 channels, hidden 128, 64 steps
#: and 256² slices.
INT_RANGES: dict[str, tuple[int, int | None]] = {
    "channels": (2, 256), "hidden": (1, 4096), "steps": (1, 1024), "coarse_steps": (0, 1024), "scale": (1, 64),
    "image_size": (1, 2048), "patch_size": (1, 2048), "axis": (0, 2), "channel": (0, 1024),
    "batch_size": (1, 4096), "warmup_batches": (0, None), "epochs": (1, None), "batches_per_epoch": (0, None),
    "val_ensemble": (1, 64), "val_every": (1, None),
}
#: (minimum, maximum, minimum excluded) of every real-valued field.
FLOAT_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "fire_rate": (0.0, 1.0, False), "lr": (0.0, None, True), "lr_gamma": (0.0, 1.0, True),
    "fg_patch_prob": (0.0, 1.0, False), "empty_slice_prob": (0.0, 1.0, False), "grad_clip": (0.0, None, False),
    "ema": (0.0, 1.0, False), "augment": (0.0, 1.0, False), "coarse_loss": (0.0, 100.0, False),
    "lr_cooldown": (0.0, 1.0, False), "augment_scale": (0.0, 0.75, False),
    "augment_gamma": (0.0, 1.5, False), "augment_contrast": (0.0, 1.5, False),
}
CHOICES: dict[str, tuple[str, ...]] = {"interpolation": _INTERPOLATIONS, "normalization": NORMALIZATIONS,
                                       "model": MODEL_TYPES}
#: Largest random seed accepted (seeds derived from it per rank and epoch stay within 64 bits).
MAX_SEED = 2 ** 32 - 1
#: Most stochastic passes of one ensemble prediction.
MAX_ENSEMBLE = 64
#: Largest :meth:`MedNCAConfig.step_work` accepted: about 15x the paper's prostate model (64 steps),
#: a few minutes per slice on a laptop CPU.
MAX_STEP_WORK = 2 * 10 ** 12


def _check_int(name: str, value: Any, low: int, high: int | None, what: str | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        what = what or (f"an integer >= {low}" if high is None else f"an integer from {low} to {high}")
        raise ConfigError(f"{name} must be {what}, got {value!r}")


def _check_float(name: str, value: Any, low: float, high: float | None, low_open: bool,
                 high_open: bool = False) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = number and (value > low if low_open else value >= low) and (
        high is None or (value < high if high_open else value <= high))
    if not ok:
        bounds = f"{'(' if low_open else '['}{low:g}, {'inf' if high is None else f'{high:g}'}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{name} must be a finite number in {bounds}, got {value!r}")


@dataclass(frozen=True)
class MedNCAConfig:
    """All settings of a Med-NCA model and of how it is trained.

    Model:
        channels: Cell state channels C (channel 0 = image, 1 = segmentation logit, rest hidden).
        hidden: Hidden units of the per-cell update network (1x1 conv 3C -> hidden -> C).
        steps: NCA steps S run by each of the two levels (by level 2 only when ``coarse_steps``
            is set).
        coarse_steps: NCA steps of level 1 (the coarse, global level); 0 = ``steps``, as the paper.
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
        orientation: Voxel axis codes (nibabel's, e.g. ``"RAS"``) every volume is reoriented to,
            without resampling, before it is sliced: in training and at prediction (the mask is
            turned back to the input's own grid). ``None``: volumes are used as stored (models
            from before mednca recorded it). ``train`` sets it to the training volumes' own.
        interpolation: In-plane image resize, ``"linear"`` or ``"cubic"`` (labels use nearest).
        normalization: Per-slice intensity scaling to [0, 1]: ``"minmax"`` (the paper's code) or
            ``"percentile"`` (minimum to the 99th percentile, brighter pixels clipped to 1; for
            images where a few very bright pixels, e.g. urine in T2 MRI, squeeze the anatomy
            into a small part of the range) or ``"robust"`` (the 0.5th to the 99.5th
            percentile, clipped: the authors' prostate preprocessing).

    Training:
        batch_size: Slices per batch.
        lr: Adam learning rate.
        betas: Adam betas.
        lr_gamma: Exponential lr decay per batch (the paper: 0.9999).
        warmup_batches: Batches of linear lr warm-up (0 = none).
        lr_cooldown: Fraction of a training session, at its end, over which the learning rate
            falls linearly to 0 (0 = off, as the paper): of the ``train`` call's time budget
            (``--max-minutes``), or of the run's epochs when they end first. A resumed run cools
            down again at the end of its new budget.
        epochs: Maximum number of epochs.
        batches_per_epoch: Batches per epoch; 0 means one pass over the training slices.
        fg_patch_prob: Probability that a training patch is centred on a foreground pixel
            (0 = uniform random patches, as the paper).
        empty_slice_prob: Probability weight of slices without foreground relative to slices
            with foreground when sampling a batch (1 = sample all slices uniformly).
        grad_clip: Max global gradient norm (0 = no clipping).
        val_ensemble: Stochastic passes averaged when computing validation Dice.
        val_every: Validate (and keep the best checkpoint) after every this many epochs; the
            last epoch of a run, the one its time budget ends, is always validated. Validation
            is training time under a time budget: on prostate one pass over the 3 validation
            volumes costs about a third of an epoch's batches.
        ema: Decay per batch of an exponential moving average of the weights (0 = off, as the
            paper). When on, validation and the saved checkpoints use the averaged weights
            (see :mod:`mednca.pipeline.ema`).
        augment: Probability that a training slice is randomly flipped, rotated, scaled and
            gamma-changed (0 = never, as the paper; see :mod:`mednca.pipeline.augment`).
        augment_scale: Zoom range of that augmentation: factors drawn uniformly from
            ``[1 - augment_scale, 1 + augment_scale]`` (at most 0.75), for test anatomy larger
            or smaller in the field of view than any training case.
        augment_gamma: Intensity range of that augmentation: the image (in [0, 1]) is raised to
            a power ``exp(u)``, ``u`` uniform in ``[-augment_gamma, augment_gamma]`` (at most
            1.5), for tissue brighter or darker than in any training case.
        augment_contrast: Range of a change, in that augmentation, of the labelled structure's
            brightness against its surroundings: the image is multiplied by ``1 + (c - 1) m``,
            ``m`` the label blurred over 2 pixels, ``c = exp(u)``, ``u`` uniform in
            ``[-augment_contrast, augment_contrast]`` (at most 1.5; 0 = off, as the paper), for a
            structure that stands out from its surroundings more or less than in any training case.
        coarse_loss: Weight of a second loss term (BCE + soft Dice) on level 1's own
            segmentation channel over its whole down-scaled grid, against the labels
            average-pooled to that grid (0 = off, as the paper: level 1 learns only through
            level 2's patch). Med-NCA only; the UNets ignore it.

    Post-processing:
        largest_component: Keep only the largest 3D connected component of a predicted mask
            (for organs that are one piece, such as the prostate; off by default).

    name: The preset this config came from ("custom" otherwise); informative only.
    """

    # model
    channels: int = 16
    hidden: int = 128
    steps: int = 16
    coarse_steps: int = 0
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
    orientation: str | None = None
    interpolation: str = "cubic"
    normalization: str = "minmax"
    # training
    batch_size: int = 32
    lr: float = 1.6e-3
    betas: tuple[float, float] = (0.5, 0.5)
    lr_gamma: float = 0.9999
    warmup_batches: int = 0
    lr_cooldown: float = 0.0
    epochs: int = 1000
    batches_per_epoch: int = 0
    fg_patch_prob: float = 0.0
    empty_slice_prob: float = 1.0
    grad_clip: float = 0.0
    val_ensemble: int = 1
    val_every: int = 1
    ema: float = 0.0
    augment: float = 0.0
    augment_scale: float = 0.15
    augment_gamma: float = 0.4
    augment_contrast: float = 0.0
    coarse_loss: float = 0.0
    largest_component: bool = False
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        for name, (low, high) in INT_RANGES.items():
            _check_int(name, getattr(self, name), low, high)
        for name, (low, high, low_open) in FLOAT_RANGES.items():
            _check_float(name, getattr(self, name), low, high, low_open)
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {getattr(self, name)!r}")
        for name in ("grad_checkpoint", "largest_component"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.ema >= 1.0:
            raise ConfigError(f"ema must be 0 (off) or a decay in (0, 1), got {self.ema!r}")
        if not isinstance(self.name, str):
            raise ConfigError(f"name must be a string, got {self.name!r}")
        if self.label is not None:
            _check_int("label", self.label, 1, None, "a positive label value or null")
        if self.orientation is not None and not is_axis_codes(self.orientation):
            raise ConfigError(f"orientation must be null or three axis codes such as 'RAS' or 'LPS' (one of L/R, "
                              f"A/P, S/I each), got {self.orientation!r}")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        for b in self.betas:
            _check_float("betas", b, 0.0, 1.0, False, high_open=True)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        self._check_shapes()

    def _check_shapes(self) -> None:
        if self.image_size % self.scale:
            raise ConfigError(f"image_size {self.image_size} is not divisible by scale {self.scale}")
        if self.patch_size > self.image_size:
            raise ConfigError(f"patch_size {self.patch_size} exceeds image_size {self.image_size}")
        if self.model != "mednca" and self.image_size < 16:
            raise ConfigError(f"a UNet (model={self.model!r}) needs image_size >= 16, got {self.image_size}")
        work = self.step_work()
        if self.model == "mednca" and work > MAX_STEP_WORK:
            raise ConfigError(f"the model is too large to run: steps x image_size² x per-cell work = {work:.2g} "
                              f"multiply-adds per slice and level (limit {MAX_STEP_WORK:.0e}); lower steps, "
                              "image_size, channels or hidden")

    def level_steps(self, index: int) -> int:
        """NCA steps of level ``index``: 1 (coarse: ``coarse_steps`` or else ``steps``) or 2 (``steps``)."""
        return (self.coarse_steps or self.steps) if index == 1 else self.steps

    def step_work(self) -> int:
        """Multiply-adds of one Med-NCA level on one whole ``image_size``² slice (all steps,
        every cell updated): what bounds the time a config can ask for."""
        per_cell = 2 * 9 * self.channels ** 2 + 3 * self.channels * self.hidden + self.hidden * self.channels
        return self.steps * self.image_size ** 2 * per_cell

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, /, **overrides: Any) -> "MedNCAConfig":
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
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of field names to values, got {type(data).__name__}")
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
        except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)


def is_axis_codes(codes: Any) -> bool:
    """Whether ``codes`` is three voxel axis codes naming each of L/R, A/P and S/I once ("RAS")."""
    if not isinstance(codes, str) or len(codes) != 3:
        return False
    pairs = [{"L", "R"}, {"A", "P"}, {"S", "I"}]
    return sorted(next((i for i, pair in enumerate(pairs) if c in pair), -1) for c in codes) == [0, 1, 2]


def check_seed(seed: Any) -> int:
    """``seed`` if it is an integer from 0 to :data:`MAX_SEED`, else :class:`ConfigError`."""
    _check_int("seed", seed, 0, MAX_SEED)
    return seed


def check_ensemble(ensemble: Any) -> int:
    """``ensemble`` if it is an integer from 1 to :data:`MAX_ENSEMBLE`, else :class:`ConfigError`."""
    _check_int("ensemble", ensemble, 1, MAX_ENSEMBLE)
    return ensemble


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
#: recipe mednca found to converge fast and reliably on a CPU (docs/training.md, "Training recipe"): Adam
#: betas (0.9, 0.99) instead of (0.5, 0.5), batch 16, half of the patches centred on foreground,
#: gradient-norm clipping, and a faster per-batch lr decay.
PRESETS: dict[str, dict[str, Any]] = {
    "hippocampus": dict(
        channels=16, hidden=128, steps=16, scale=4, fire_rate=0.5,
        image_size=64, patch_size=16, axis=2, interpolation="cubic",
        batch_size=16, lr=2e-3, betas=(0.9, 0.99), lr_gamma=0.99975,
        fg_patch_prob=0.5, grad_clip=1.0,
    ),
    # a CPU recipe for whole-field-of-view prostate MRI (RESULTS, "Prostate"): 128² slices with
    # level 1 at 32², which its 36 steps cross; 8 steps at level 2 on 32² patches (it refines
    # level 1's context locally: 24 learned no better per batch and cost 1.4× the time); slices
    # scaled to their 99th percentile; averaged weights, augmentation against overfitting 29
    # volumes, with zooms of ±40 % (test glands up to 1.5× larger than any training gland) and the
    # gland's contrast against its surroundings varied by up to exp(±0.5) (test glands up to 2.5×
    # brighter than the image centre, training at most 1.9×); the largest component kept;
    # validation (a quarter of an epoch's time) every 4th epoch
    "prostate": dict(
        channels=16, hidden=128, steps=8, coarse_steps=36, scale=4, fire_rate=0.5,
        image_size=128, patch_size=32, axis=2, interpolation="cubic", normalization="percentile",
        batch_size=16, lr=2e-3, betas=(0.9, 0.99), lr_gamma=0.9998,
        fg_patch_prob=0.5, grad_clip=1.0, ema=0.998, augment=0.5, augment_scale=0.4,
        augment_contrast=0.5, largest_component=True, val_every=4,
    ),
    "paper-hippocampus": dict(
        channels=16, hidden=128, steps=16, scale=4, fire_rate=0.5,
        image_size=64, patch_size=16, axis=2, interpolation="cubic",
        batch_size=32, lr=1.6e-3, betas=(0.5, 0.5), lr_gamma=0.9999,
    ),
    # the authors' train_Med_NCA.ipynb for prostate: 64 steps per level, batch 20, slices clipped
    # at their 0.5 / 99.5 percentiles, uniform random patches; gradient checkpointing only saves
    # memory (the same gradients)
    "paper-prostate": dict(
        channels=32, hidden=128, steps=64, scale=4, fire_rate=0.5,
        image_size=256, patch_size=64, axis=2, interpolation="cubic", normalization="robust",
        batch_size=20, lr=1.6e-3, betas=(0.5, 0.5), lr_gamma=0.9999, grad_checkpoint=True,
    ),
    "demo": dict(
        channels=16, hidden=64, steps=12, scale=4, fire_rate=0.5,
        image_size=32, patch_size=16, axis=2, interpolation="linear",
        batch_size=16, lr=2e-3, betas=(0.9, 0.99), lr_gamma=1.0,
        fg_patch_prob=0.5, grad_clip=1.0,
    ),
}
