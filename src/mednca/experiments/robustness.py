"""Robustness: every model scored on the same graded perturbations of the same test volumes.

The perturbations (MRI artefacts and in-plane geometry, each at ``S`` graded severities) are
defined in :mod:`mednca.experiments.perturbations`. Each perturbed volume is made once and fed as
the same array to every model; the rows (one per model, perturbation, severity and case) go to
``robustness.csv``, their means to ``robustness.json`` and the curves to ``robustness.png``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..data.cases import Case, find_cases
from ..data.runfolder import RunFolder
from ..data.volumes import binarize, read_case
from ..errors import DataError
from ..formats import csv_number, write_json
from ..fsutil import atomic_path, check_output
from ..nn.base import SegmentationModel
from ..nn.build import load_model
from ..pipeline.metrics import dice
from ..pipeline.predict import predict_volume
from ..pipeline.quality import quality_score
from .perturbations import DEFAULT_SEVERITIES, PERTURBATIONS, Context, perturb
from .runs import require_extras, run_labels

CSV_FIELDS = ("model", "run", "perturbation", "severity", "magnitude", "case", "dice", "quality")
DEFAULT_ENSEMBLE = 4


# -- the experiment ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Model:
    label: str
    run: Path
    model: SegmentationModel


@dataclass(frozen=True)
class _Plan:
    """What every case is scored on: the models, the (perturbation, severity) variants, the seeds."""

    models: list[_Model]
    perturbations: list[str]
    severities: int
    seed: int
    ensemble: int

    @property
    def variants(self) -> list[tuple[str, int]]:
        """The clean image (``"none"``, 0), then every perturbation at severities 1..S."""
        return [("none", 0)] + [(n, s) for n in self.perturbations for s in range(1, self.severities + 1)]


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
    require_extras("torchio", "matplotlib")
    names = _check_arguments(runs, severities, ensemble, perturbations)
    folders = [RunFolder.open(r) for r in runs]
    ids = _case_ids(folders, split, cases)
    data = folders[0].data_dir(data_dir)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        for name in ("robustness.csv", "robustness.json", "robustness.png"):
            check_output(out / name, overwrite)
    plan = _Plan(_load_models(folders), names, severities, seed, ensemble)
    case_files = _case_files(plan.models, ids, data, split)
    total = len(ids) * len(plan.variants) * len(plan.models)
    rows: list[dict] = []
    for case_id in ids:
        for row in _case_rows(plan, case_id, case_files):
            rows.append(row)
            if progress:
                progress(len(rows), total, f"{case_id} {row['perturbation']} {row['severity']}")
    if out is not None:
        write_outputs(rows, out, names, severities, meta={
            "runs": [str(r.path) for r in folders], "models": {m.label: str(m.run) for m in plan.models},
            "data": str(data), "split": split, "cases": ids, "seed": seed, "ensemble": ensemble,
        })
    return rows


def _check_arguments(runs: Sequence[str | Path], severities: int, ensemble: int,
                     perturbations: Sequence[str] | None) -> list[str]:
    """The perturbation names to run, after checking the arguments that need no file."""
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
    return names


def _case_ids(runs: Sequence[RunFolder], split: str, cases: int | None) -> list[str]:
    """The sorted ``split`` case ids every run shares (the first ``cases`` of them)."""
    ids = sorted(runs[0].split_ids(split))
    for r in runs[1:]:
        other = sorted(r.split_ids(split))
        if other != ids:
            raise DataError(f"runs {runs[0].path} and {r.path} have different {split} splits "
                            f"({len(ids)} vs {len(other)} cases, {len(set(ids) ^ set(other))} differ); "
                            "robustness compares models on the same cases: train them with the same --split")
    if cases is not None:
        if cases < 1:
            raise DataError(f"--cases must be >= 1, got {cases}")
        ids = ids[:cases]
    if not ids:
        raise DataError(f"the {split} split of {runs[0].path} is empty")
    return ids


def _load_models(runs: Sequence[RunFolder]) -> list[_Model]:
    models = [load_model(r.path) for r in runs]
    paths = [r.path for r in runs]
    return [_Model(label, path, model) for label, path, model in zip(run_labels(paths, models), paths, models)]


def _case_files(models: Sequence[_Model], ids: Sequence[str], data_dir: Path, split: str) -> dict[int, dict[str, Case]]:
    """``{channel: {case id: Case}}`` of the cases, for every image channel the models read."""
    wanted = set(ids)
    found: dict[int, dict[str, Case]] = {}
    for ch in dict.fromkeys(m.model.config.channel for m in models):
        found[ch] = {c.case_id: c for c in find_cases(data_dir, ch) if c.case_id in wanted}
        missing = sorted(wanted - set(found[ch]))
        if missing:
            raise DataError(f"{len(missing)} {split} case(s) of the runs are missing in {data_dir}, e.g. {missing[0]}")
    return found


def _case_rows(plan: _Plan, case_id: str, case_files: dict[int, dict[str, Case]]) -> Iterator[dict]:
    """The rows of one case: every variant (perturbation, severity) scored by every model."""
    volumes = {}  # channel -> (image, label, affine)
    for ch in dict.fromkeys(m.model.config.channel for m in plan.models):
        image, label = read_case(case_files[ch][case_id])
        volumes[ch] = (image.data, label.data, image.affine)
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # each perturbed volume made once
    for pname, sev in plan.variants:
        for m in plan.models:
            cfg = m.model.config
            key = (cfg.channel, cfg.axis, pname, sev)
            if key not in cache:
                image, label, affine = volumes[cfg.channel]
                cache[key] = (image, label) if sev == 0 else perturb(
                    image, label, Context(affine, cfg.axis), pname, sev, plan.severities, seed=plan.seed,
                    case_id=case_id)
            yield _score(plan, m, *cache[key], pname, sev, case_id)
        if sev == plan.severities or pname == "none":  # free a finished perturbation's volumes
            for k in [k for k in cache if k[2] == pname]:
                del cache[k]


def _score(plan: _Plan, m: _Model, image: np.ndarray, label: np.ndarray, pname: str, sev: int,
           case_id: str) -> dict:
    """One row: the model's Dice (and quality score, with K >= 2) on one (perturbed) volume."""
    pred = predict_volume(m.model, image, plan.ensemble, torch.Generator().manual_seed(plan.seed))
    return {
        "model": m.label, "run": str(m.run), "perturbation": pname, "severity": sev,
        "magnitude": 0.0 if pname == "none" else PERTURBATIONS[pname].magnitude(sev, plan.severities),
        "case": case_id, "dice": dice(pred.mask, binarize(label, m.model.config.label)),
        "quality": quality_score(pred.probability, pred.std) if plan.ensemble > 1 else float("nan"),
    }



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


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write the rows (columns :data:`CSV_FIELDS`) atomically."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in rows:
            writer.writerow([csv_number(r[k]) if isinstance(r[k], float) else r[k] for k in CSV_FIELDS])
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
    write_json(out / "robustness.json", result)
    return result
