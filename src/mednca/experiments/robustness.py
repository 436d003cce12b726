"""Robustness: every model scored on the same graded perturbations of the same test volumes.

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
with severity. Each perturbed volume is made once and fed as the same array to every model.
"""

from __future__ import annotations

import csv
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import DataError, MedNCAError, MissingDependencyError
from ..fsutil import atomic_path, atomic_write_text, check_output

CSV_FIELDS = ("model", "run", "perturbation", "severity", "magnitude", "case", "dice", "quality")
DEFAULT_SEVERITIES = 3
DEFAULT_ENSEMBLE = 4


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
def require_extras(*modules: str) -> None:
    """Raise :class:`MissingDependencyError` (one line, with the install command) if a module is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"{', '.join(missing)} not installed; install it with: pip install 'mednca[report]' "
                                     f"(or pip install {' '.join(missing)})")


def intensity_range(image: np.ndarray) -> float:
    """Robust intensity range of a volume (0.5th to 99.5th percentile; 1 for a constant one)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    span = float(hi - lo) or float(image.max() - image.min())
    return span if span > 0 else 1.0


def _tio_apply(transform, image: np.ndarray, ctx: Context, seed: int = 0) -> np.ndarray:
    """Run a TorchIO transform on one 3D image; torch's global random state is left untouched."""
    import torch
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


# -- the experiment ----------------------------------------------------------------------------
@dataclass
class _Model:
    label: str
    run: Path
    model: Any
    arch: str


def _run_split(run: Path, split: str) -> list[str]:
    path = run / "split.json"
    if not path.is_file():
        raise DataError(f"{run} is not a run folder (no split.json)")
    ids = json.loads(path.read_text())
    if split not in ids:
        raise DataError(f"split {split!r} not in {path} (has {', '.join(ids)})")
    return sorted(ids[split])


def _model_labels(runs: Sequence[Path], archs: Sequence[str]) -> list[str]:
    """Short display names: the architecture, or architecture + run folder name when ambiguous."""
    labels = [a if archs.count(a) == 1 else f"{a} ({r.name})" for a, r in zip(archs, runs)]
    if len(set(labels)) < len(labels):
        labels = [f"{a} ({r})" for a, r in zip(archs, runs)]
    return labels


def run_robustness(runs: Sequence[str | Path], data_dir: str | Path | None = None, split: str = "test", *,
                   out_dir: str | Path | None = None, severities: int = DEFAULT_SEVERITIES,
                   cases: int | None = None, seed: int = 0, ensemble: int = DEFAULT_ENSEMBLE,
                   perturbations: Sequence[str] | None = None, overwrite: bool = False,
                   progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """Score every run's best model on every perturbation x severity of the ``split`` cases.

    Every model sees the identical perturbed volumes (each made once, cached in memory) and the
    same fire-mask seed. (Models that slice along different axes, or read different channels,
    get geometry perturbations in their own plane, so identical only among models alike.) Rows include the clean images as perturbation ``"none"``, severity 0,
    so there are ``models x cases x (perturbations x severities + 1)`` rows.

    Args:
        runs: Run folders; all must have the same ``split`` case ids in their ``split.json``.
        data_dir: Task folder (default: the first run's training data, from ``run.json``).
        out_dir: Where to write ``robustness.csv``, ``robustness.json`` and ``robustness.png``
            (+ ``robustness_quality.png``); ``None`` writes nothing.
        severities: Number of graded severities per perturbation (>= 1).
        cases: Use only the first N case ids (sorted) of the split.
        seed: Seed of the perturbations' random parameters and of the models' fire masks.
        ensemble: Stochastic passes K per prediction (quality score needs K >= 2).
        perturbations: Names from :data:`PERTURBATIONS` (default: all).

    Returns:
        One dict per (model, perturbation, severity, case) with the keys of :data:`CSV_FIELDS`.
    """
    import torch

    from ..nn.build import load_model
    from ..data.cases import find_cases
    from ..data.volumes import binarize, read_case
    from ..pipeline.metrics import dice
    from ..pipeline.predict import predict_volume
    from ..pipeline.quality import quality_score

    require_extras("torchio", "matplotlib")
    if not runs:
        raise DataError("robustness needs at least one run folder")
    if severities < 1:
        raise DataError(f"severities must be >= 1, got {severities}")
    if ensemble < 1:
        raise DataError(f"ensemble must be >= 1, got {ensemble}")
    names = list(perturbations) if perturbations else list(PERTURBATIONS)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise DataError(f"unknown perturbation(s) {', '.join(unknown)}; known: {', '.join(PERTURBATIONS)}")
    run_dirs = [Path(r) for r in runs]
    ids = _run_split(run_dirs[0], split)
    for r in run_dirs[1:]:
        other = _run_split(r, split)
        if other != ids:
            raise DataError(f"runs {run_dirs[0]} and {r} have different {split} splits "
                            f"({len(ids)} vs {len(other)} cases, {len(set(ids) ^ set(other))} differ); "
                            "robustness compares models on the same cases: train them with the same --split")
    if cases is not None:
        if cases < 1:
            raise DataError(f"--cases must be >= 1, got {cases}")
        ids = ids[:cases]
    if not ids:
        raise DataError(f"the {split} split of {run_dirs[0]} is empty")
    if data_dir is None:
        run_json = run_dirs[0] / "run.json"
        if not run_json.is_file():
            raise DataError(f"{run_dirs[0]} has no run.json; pass the task folder with --data")
        data_dir = json.loads(run_json.read_text())["data"]
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        for name in ("robustness.csv", "robustness.json", "robustness.png"):
            check_output(out / name, overwrite)

    loaded = [load_model(r) for r in run_dirs]
    archs = [str(getattr(m.config, "model", "mednca")) for m in loaded]
    models = [_Model(lbl, r, m, a) for lbl, r, m, a in zip(_model_labels(run_dirs, archs), run_dirs, loaded, archs)]

    wanted = set(ids)
    case_files: dict[int, dict] = {}  # channel -> {case id: Case}
    for m in models:
        ch = m.model.config.channel
        if ch not in case_files:
            found = {c.case_id: c for c in find_cases(data_dir, ch) if c.case_id in wanted}
            missing = sorted(wanted - set(found))
            if missing:
                raise DataError(f"{len(missing)} {split} case(s) of the runs are missing in {data_dir}, e.g. {missing[0]}")
            case_files[ch] = found

    variants = [("none", 0)] + [(n, s) for n in names for s in range(1, severities + 1)]
    total = len(ids) * len(variants) * len(models)
    done = 0
    rows: list[dict] = []
    for case_id in ids:
        volumes: dict[int, tuple] = {}
        for m in models:
            ch = m.model.config.channel
            if ch not in volumes:
                image, label = read_case(case_files[ch][case_id])
                volumes[ch] = (image.data, label.data, image.affine)
        cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        for pname, sev in variants:
            for m in models:
                cfg = m.model.config
                key = (cfg.channel, cfg.axis, pname, sev)
                if key not in cache:
                    image, label, affine = volumes[cfg.channel]
                    ctx = Context(affine, cfg.axis)
                    cache[key] = (image, label) if sev == 0 else perturb(
                        image, label, ctx, pname, sev, severities, seed=seed, case_id=case_id)
                image, label = cache[key]
                pred = predict_volume(m.model, image, ensemble, torch.Generator().manual_seed(seed))
                target = binarize(label, cfg.label)
                rows.append({
                    "model": m.label, "run": str(m.run), "perturbation": pname, "severity": sev,
                    "magnitude": 0.0 if pname == "none" else PERTURBATIONS[pname].magnitude(sev, severities),
                    "case": case_id, "dice": dice(pred.mask, target),
                    "quality": quality_score(pred.probability, pred.std) if ensemble > 1 else float("nan"),
                })
                done += 1
                if progress:
                    progress(done, total, f"{case_id} {pname} {sev}")
            if sev == severities or pname == "none":  # free a finished perturbation's volumes
                for k in [k for k in cache if k[2] == pname]:
                    del cache[k]
    if out is not None:
        write_outputs(rows, out, names, severities, meta={
            "runs": [str(r) for r in run_dirs], "models": {m.label: str(m.run) for m in models},
            "data": str(data_dir), "split": split, "cases": ids, "seed": seed, "ensemble": ensemble,
        })
    return rows


# -- outputs -----------------------------------------------------------------------------------
def summarize_rows(rows: Sequence[dict]) -> dict:
    """``{model: {perturbation: {severity: {dice_mean, dice_std, quality_mean, n}}}}``; the
    clean rows (``"none"``) are also reported as severity 0 of every perturbation."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["perturbation"], int(r["severity"])), []).append(r)
    perts = [p for p in dict.fromkeys(r["perturbation"] for r in rows) if p != "none"]
    out: dict = {}
    for (model, pert, sev), group in groups.items():
        d = np.array([g["dice"] for g in group], float)
        q = np.array([g["quality"] for g in group], float)
        q = q[np.isfinite(q)]
        stats = {"dice_mean": float(d.mean()), "dice_std": float(d.std()),
                 "quality_mean": float(q.mean()) if len(q) else None, "n": len(group)}
        for p in (perts if pert == "none" else [pert]):
            out.setdefault(model, {}).setdefault(p, {})[str(sev)] = stats
    for model in out:  # severities in order
        out[model] = {p: dict(sorted(s.items(), key=lambda kv: int(kv[0]))) for p, s in out[model].items()}
    return out


def _fmt(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write the rows (columns :data:`CSV_FIELDS`) atomically."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([_fmt(r[k]) if isinstance(r[k], float) else r[k] for k in CSV_FIELDS])
    return Path(path)


def plot_curves(summary: dict, perturbations: Sequence[str], severities: int, path: str | Path,
                value: str = "dice_mean", ylabel: str = "mean Dice") -> int:
    """One panel per perturbation, one line per model: ``value`` against severity (0 = clean).

    Returns:
        The number of panels (axes) drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(perturbations)
    cols = min(3, n)
    rows_ = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(3.8 * cols, 2.9 * rows_), squeeze=False,
                             sharey=value == "dice_mean")
    for ax in axes.flat[n:]:
        fig.delaxes(ax)
    for i, (ax, pert) in enumerate(zip(axes.flat, perturbations)):
        p = PERTURBATIONS.get(pert)
        for model, per in summary.items():
            s = per.get(pert, {})
            xs = sorted(int(k) for k in s)
            ys = [s[str(x)][value] for x in xs]
            ax.plot(xs, [np.nan if y is None else y for y in ys], marker="o", label=model)
        ax.set_title(pert if p is None else f"{pert} (max {p.max_magnitude:g})", fontsize=10)
        ax.set_xticks(range(severities + 1))
        ax.set_xlabel("severity (0 = clean)", fontsize=8)
        if i % cols == 0 or value != "dice_mean":
            ax.set_ylabel(ylabel, fontsize=8)
        if value == "dice_mean":
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=9,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    drawn = len(fig.axes)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return drawn


def write_outputs(rows: Sequence[dict], out_dir: str | Path, perturbations: Sequence[str], severities: int,
                  meta: dict | None = None) -> dict:
    """Write ``robustness.csv``, ``robustness.json`` (summary) and the plots into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "robustness.csv")
    summary = summarize_rows(rows)
    panels = plot_curves(summary, perturbations, severities, out / "robustness.png")
    has_quality = any(r["quality"] is not None and math.isfinite(r["quality"]) for r in rows)
    if has_quality:
        plot_curves(summary, perturbations, severities, out / "robustness_quality.png", "quality_mean",
                    "mean quality score")
    result = {
        **(meta or {}),
        "severities": severities,
        "perturbations": {n: {"kind": PERTURBATIONS[n].kind, "unit": PERTURBATIONS[n].unit,
                              "magnitudes": [PERTURBATIONS[n].magnitude(s, severities)
                                             for s in range(severities + 1)]} for n in perturbations},
        "figures": {"dice": "robustness.png", "panels": panels,
                    "quality": "robustness_quality.png" if has_quality else None},
        "summary": summary,
        "conventions": "Dice on hard 3D masks (mean probability > 0.5) against the (transformed) label; "
                       "severity 0 = clean images (perturbation 'none'); quality = sum(std) / max(sum(mean), 1) "
                       "over K stochastic passes (lower = more confident), see mednca.pipeline.quality.",
    }
    atomic_write_text(out / "robustness.json", json.dumps(_json_safe(result), indent=2) + "\n")
    return result


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
