"""Graded perturbations of a test volume: MRI artefacts and in-plane geometry changes.

Perturbations (``PERTURBATIONS``, in this order):

* MRI artefacts, through TorchIO's deterministic transforms (the twins of ``tio.Random*``):
  ``noise`` (``tio.Noise``), ``spike`` (``tio.Spike``), ``ghosting`` (``tio.Ghosting``),
  ``motion`` (``tio.Motion``), ``bias_field`` (``tio.BiasField``), ``anisotropy``
  (``tio.RandomAnisotropy`` with its range pinned to one axis and one factor, which makes it
  deterministic).
* Geometry, in-plane (the two axes other than the model's slicing axis ``config.axis``), with the
  label transformed identically (nearest neighbour): ``translation`` by up to ±50 % of the field
  of view (integer shift, padded with the image minimum and label 0, never wrapped) and
  ``zoom_in`` (×1 → ×2) / ``zoom_out`` (×1 → ×0.5) about the centre, cropped/padded back to the
  original shape.

Severity ``k`` of ``S`` (``k = 1..S``) sets the fraction ``t = k / S`` of each perturbation's
maximum magnitude (severity 0 is the clean image). The random parts of a perturbation (noise
field, spike position, ghosting axis, motion directions and times, bias coefficients' signs,
anisotropy axis, translation direction) are drawn once per (seed, case, perturbation) from a
``numpy`` generator; severity only scales the magnitude, so a case's artefact grows smoothly
with severity. :func:`perturb` makes one perturbed (image, label) pair.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

#: Graded severities per perturbation unless told otherwise.
DEFAULT_SEVERITIES = 3


@dataclass(frozen=True)
class Context:
    """What a perturbation needs to know about a volume besides its voxels.

    Attributes:
        affine: (4, 4) voxel-to-world matrix (mm), for the physical artefacts (motion, anisotropy).
        axis: The model's slicing axis; geometry acts on the other two ("in-plane") axes.
    """

    affine: np.ndarray
    axis: int = 2

    @property
    def in_plane(self) -> tuple[int, int]:
        a, b = (i for i in range(3) if i != self.axis)
        return a, b


Sample = Callable[[np.random.Generator, Context], dict]
Apply = Callable[[np.ndarray, np.ndarray, Context, float, dict], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Perturbation:
    """A named, graded perturbation.

    Attributes:
        name: Short name (CSV, plots).
        kind: ``"mri"`` (intensity artefact; label unchanged) or ``"geometry"`` (label moves too).
        unit: What :meth:`magnitude` measures.
        max_magnitude: The magnitude at the highest severity (``t = 1``).
        sample: Draws the random parameters (once per seed, case and perturbation).
        apply: ``apply(image, label, context, magnitude, params) -> (image, label)``.
        scale: ``"linear"``: magnitude = ``base + t * (max - base)``; ``"log2"``: magnitude =
            ``max ** t`` (zoom factors).
        base: The magnitude of the clean image (t = 0).
    """

    name: str
    kind: str
    unit: str
    max_magnitude: float
    sample: Sample = field(repr=False)
    apply: Apply = field(repr=False)
    scale: str = "linear"
    base: float = 0.0

    def magnitude(self, severity: int, severities: int) -> float:
        """The magnitude of severity ``severity`` (0 = clean) out of ``severities``."""
        if not 0 <= severity <= severities:
            raise ValueError(f"severity must be in 0..{severities}, got {severity}")
        t = severity / severities
        if self.scale == "log2":
            return float(self.max_magnitude ** t)
        return float(self.base + t * (self.max_magnitude - self.base))


# -- helpers ---------------------------------------------------------------------------------
def intensity_range(image: np.ndarray) -> float:
    """Robust intensity range of a volume (0.5th to 99.5th percentile; 1 for a constant one)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    span = float(hi - lo) or float(image.max() - image.min())
    return span if span > 0 else 1.0


def _tio_apply(transform, image: np.ndarray, ctx: Context, seed: int = 0) -> np.ndarray:
    """Run a TorchIO transform on one 3D image; torch's global random state is left untouched."""
    import torchio as tio

    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(image, np.float32))[None],
                                                affine=np.asarray(ctx.affine, np.float64)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = transform(subject)
    return out["image"].data[0].numpy().astype(np.float32)


def _seed_of(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


# -- MRI artefacts (TorchIO) -------------------------------------------------------------------
def noise_params(rng: np.random.Generator, ctx: Context) -> dict:
    return {"seed": _seed_of(rng)}


def add_noise(image, label, ctx, std_fraction, p):
    """Gaussian noise of std ``std_fraction`` x the image's intensity range (one fixed field)."""
    import torchio as tio

    std = std_fraction * intensity_range(image)
    return _tio_apply(tio.Noise(mean=0.0, std=std, seed=p["seed"]), image, ctx), label


def spike_params(rng: np.random.Generator, ctx: Context) -> dict:
    # One k-space spike, in-plane away from the centre (a spike at the centre only shifts brightness).
    pos = np.full(3, 0.5) + 0.0
    pos[ctx.axis] = rng.uniform(0, 1)
    for a in ctx.in_plane:
        pos[a] = 0.5 + rng.choice([-1, 1]) * rng.uniform(0.1, 0.4)
    return {"positions": pos[None]}


def add_spike(image, label, ctx, intensity, p):
    """A k-space spike of ``intensity`` x the spectrum's maximum (herringbone stripes)."""
    import torchio as tio

    return _tio_apply(tio.Spike(spikes_positions=p["positions"], intensity=intensity), image, ctx), label


def ghosting_params(rng: np.random.Generator, ctx: Context) -> dict:
    return {"num_ghosts": int(rng.integers(4, 11)), "axis": int(rng.choice(ctx.in_plane))}


def add_ghosting(image, label, ctx, intensity, p):
    """Ghosts along an in-plane (phase-encode) axis: every n-th k-space plane scaled by 1 - intensity."""
    import torchio as tio

    t = tio.Ghosting(num_ghosts=p["num_ghosts"], axis=p["axis"], intensity=intensity, restore=None)
    return _tio_apply(t, image, ctx), label


def motion_params(rng: np.random.Generator, ctx: Context) -> dict:
    n = 2  # movements during the acquisition (tio.RandomMotion's default)
    step = 1 / (n + 1)
    times = np.arange(1, n + 1) * step + rng.uniform(-0.3 * step, 0.3 * step, n)
    return {"degrees": rng.uniform(-1, 1, (n, 3)), "translation": rng.uniform(-1, 1, (n, 3)), "times": times}


def add_motion(image, label, ctx, amount, p):
    """Rigid motion during the acquisition: rotations up to ``amount`` degrees and translations up
    to ``amount`` mm per axis, mixed in k-space (Shaw et al. 2019)."""
    import torchio as tio

    if amount == 0:
        return image, label
    t = tio.Motion(degrees=amount * p["degrees"], translation=amount * p["translation"], times=p["times"],
                   image_interpolation="linear")
    return _tio_apply(t, image, ctx), label


BIAS_ORDER = 3


def bias_params(rng: np.random.Generator, ctx: Context) -> dict:
    n = sum(1 for x in range(BIAS_ORDER + 1) for y in range(BIAS_ORDER + 1 - x) for _ in range(BIAS_ORDER + 1 - x - y))
    return {"coefficients": rng.uniform(-1, 1, n)}


def add_bias_field(image, label, ctx, amount, p):
    """A smooth multiplicative field exp(polynomial of order 3), coefficients up to ``amount``."""
    import torchio as tio

    t = tio.BiasField(coefficients=(amount * p["coefficients"]).tolist(), order=BIAS_ORDER)
    return _tio_apply(t, image, ctx), label


def anisotropy_params(rng: np.random.Generator, ctx: Context) -> dict:
    return {"axis": int(rng.choice(ctx.in_plane))}


def add_anisotropy(image, label, ctx, factor, p):
    """Downsample one in-plane axis by ``factor`` (nearest) and upsample back (linear)."""
    import torchio as tio

    if factor <= 1:
        return image, label
    t = tio.RandomAnisotropy(axes=(p["axis"],), downsampling=(factor, factor), image_interpolation="linear")
    return _tio_apply(t, image, ctx), label


# -- geometry (image and label alike) ----------------------------------------------------------
def shift(array: np.ndarray, shifts: Sequence[int], fill: float) -> np.ndarray:
    """Shift ``array`` by whole voxels along each axis; uncovered voxels get ``fill`` (no wrap).

    ``out[i + s] = array[i]`` where both are inside the array.
    """
    out = np.full_like(array, fill)
    src, dst = [], []
    for n, s in zip(array.shape, shifts):
        s = int(s)
        if abs(s) >= n:
            return out
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def translation_params(rng: np.random.Generator, ctx: Context) -> dict:
    d = rng.uniform(-1, 1, 2)
    return {"direction": d / max(np.abs(d).max(), 1e-9)}  # the larger component is ±1


def translate(image, label, ctx, fraction, p):
    """Shift in-plane by ``fraction`` of the field of view along the drawn direction."""
    shifts = [0, 0, 0]
    for a, d in zip(ctx.in_plane, p["direction"]):
        shifts[a] = int(round(fraction * d * image.shape[a]))
    return shift(image, shifts, float(image.min())), shift(label, shifts, 0)


def zoom(array: np.ndarray, factor: float, axis: int, order: int, fill: float) -> np.ndarray:
    """Zoom in-plane (the axes other than ``axis``) by ``factor`` about the centre, keeping the shape.

    Output voxel ``o`` takes input ``c + (o - c) / factor`` (``c`` the centre); outside: ``fill``.
    """
    from scipy import ndimage

    if factor == 1:
        return array.copy()
    scale = np.array([1.0 if i == axis else 1.0 / factor for i in range(array.ndim)])
    centre = (np.array(array.shape) - 1) / 2.0
    offset = np.where(np.arange(array.ndim) == axis, 0.0, centre - centre * scale)
    src = array.astype(np.float32) if order > 0 else array
    out = ndimage.affine_transform(src, scale, offset=offset, order=order, mode="constant", cval=fill)
    return out.astype(array.dtype, copy=False)


def zoom_both(image, label, ctx, factor, p):
    """Zoom image (linear) and label (nearest) in-plane by ``factor`` about the centre."""
    return (zoom(image, factor, ctx.axis, 1, float(image.min())), zoom(label, factor, ctx.axis, 0, 0))


def _no_params(rng: np.random.Generator, ctx: Context) -> dict:
    return {}


PERTURBATIONS: dict[str, Perturbation] = {p.name: p for p in (
    Perturbation("noise", "mri", "noise std / intensity range", 0.2, noise_params, add_noise),
    Perturbation("spike", "mri", "spike / spectrum maximum", 1.0, spike_params, add_spike),
    Perturbation("ghosting", "mri", "ghost plane attenuation", 1.0, ghosting_params, add_ghosting),
    Perturbation("motion", "mri", "max rotation (deg) = max translation (mm)", 10.0, motion_params, add_motion),
    Perturbation("bias_field", "mri", "max |coefficient|", 0.6, bias_params, add_bias_field),
    Perturbation("anisotropy", "mri", "downsampling factor", 5.0, anisotropy_params, add_anisotropy, base=1.0),
    Perturbation("translation", "geometry", "shift / field of view", 0.5, translation_params, translate),
    Perturbation("zoom_in", "geometry", "zoom factor", 2.0, _no_params, zoom_both, scale="log2", base=1.0),
    Perturbation("zoom_out", "geometry", "zoom factor", 0.5, _no_params, zoom_both, scale="log2", base=1.0),
)}


def case_rng(seed: int, case_id: str, perturbation: str) -> np.random.Generator:
    """The generator of a (seed, case, perturbation)'s random parameters (independent of order)."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode()), zlib.crc32(perturbation.encode())])


def perturb(image: np.ndarray, label: np.ndarray, ctx: Context, perturbation: str | Perturbation,
            severity: int, severities: int = DEFAULT_SEVERITIES, *, seed: int = 0,
            case_id: str = "") -> tuple[np.ndarray, np.ndarray]:
    """One perturbed (image, label) pair: a deterministic function of all the arguments.

    Args:
        image, label: (X, Y, Z) image and label map (any integer labels).
        ctx: Affine and slicing axis.
        perturbation: A name from :data:`PERTURBATIONS` or a :class:`Perturbation`.
        severity: 0 (clean: returns copies) to ``severities``.
        seed, case_id: Select the perturbation's random parameters.

    Returns:
        (float32 image, label of the input's dtype), both of the input's shape.
    """
    p = PERTURBATIONS[perturbation] if isinstance(perturbation, str) else perturbation
    magnitude = p.magnitude(severity, severities)
    image = np.asarray(image, np.float32)
    if severity == 0:
        return image.copy(), np.array(label, copy=True)
    params = p.sample(case_rng(seed, case_id, p.name), ctx)
    out_image, out_label = p.apply(image, label, ctx, magnitude, params)
    out_image = np.asarray(out_image, np.float32)
    if out_image.shape != image.shape or out_label.shape != label.shape:
        raise RuntimeError(f"{p.name} changed the shape {image.shape} -> {out_image.shape}")
    if not np.isfinite(out_image).all():
        raise RuntimeError(f"{p.name} at severity {severity} made non-finite voxels")
    return out_image, out_label

