"""One Markdown report of an experiment: comparison, robustness, quality estimate, example cases.

``make_report(runs, "report/")`` writes ``report/README.md`` and the figures it links, all beside
it (self-contained, figures at most 1200 px wide):

* a comparison table: a ``mednca compare`` output (``compare.json``: given, or found in a run
  folder) when there is one, else one row per run from its ``eval_{split}.json``;
* robustness plots and a table of mean Dice per perturbation (from ``mednca robustness``
  outputs: given, or ``RUN/robustness_{split}/`` when present);
* a scatter of the ground-truth-free quality score against Dice (runs evaluated with
  ``--ensemble K``, K >= 2);
* for every run, the best, median and worst test case by Dice: image, ground truth, prediction
  and uncertainty on the slice with the largest label area;
* for Med-NCA runs, a GIF of the NCA state growing step by step (level 1, then level 2) on one
  slice: sigmoid of the logit channel.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.cases import find_cases
from ..data.runfolder import RunFolder
from ..data.slices import image_slices, label_slices
from ..data.volumes import binarize, read_case, read_image
from ..errors import DataError
from ..formats import MISSING, cell
from ..fsutil import atomic_path, atomic_write_text, check_output
from ..nn.build import load_model
from ..nn.model import MedNCA
from ..pipeline.predict import predict_oriented
from ..pipeline.quality import DEFINITION
from ..version import __version__
from .runs import require_extras, run_labels

MAX_WIDTH_IN = 12.0  # figures are drawn at 100 dpi: at most 1200 px wide
DPI = 100


@dataclass
class RunInfo:
    """What the report knows about one run."""

    folder: RunFolder
    label: str
    slug: str
    params: int
    model: Any
    results: dict  # its eval_{split}.json

    @property
    def path(self) -> Path:
        return self.folder.path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    _plt().close(fig)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def _mean_std(stats: dict | None, fmt: str = ".4f") -> str:
    """``mean ± std`` of a summary entry; – when it has no mean."""
    if not stats or cell(stats.get("mean")) == MISSING:
        return MISSING
    return f"{cell(stats['mean'], fmt)} ± {cell(stats['std'], fmt)}"


def load_runs(runs: Sequence[str | Path], split: str = "test") -> list[RunInfo]:
    """Load each run's model and ``eval_{split}.json`` (every run checked before any is loaded).

    Raises:
        DataError: A folder is not a run, or has not been evaluated on ``split``.
    """
    if not runs:
        raise DataError("report needs at least one run folder")
    folders = [RunFolder.open(r) for r in runs]
    for run in folders:
        if not run.eval_file(split).is_file():
            raise DataError(f"{run.path} has no {run.eval_file(split).name}; run 'mednca evaluate {run.path} "
                            f"--split {split} --ensemble 4' first")
    results = [run.eval_results(split) for run in folders]
    models = [load_model(run.path) for run in folders]
    labels = run_labels([run.path for run in folders], models)
    slugs = [_slug(lbl) for lbl in labels]
    if len(set(slugs)) < len(slugs):
        slugs = [f"{s}_{i}" for i, s in enumerate(slugs)]
    return [RunInfo(run, lbl, slug, sum(int(t.numel()) for t in m.parameters()), m, res)
            for run, lbl, slug, m, res in zip(folders, labels, slugs, models, results)]


# -- comparison --------------------------------------------------------------------------------
def find_compare(runs: Sequence[RunInfo], compare: str | Path | None) -> Path | None:
    """The ``mednca compare`` JSON to use: the given one, else the first ``compare.json`` found in
    (or under ``compare/`` of) a run folder."""
    if compare is not None:
        path = Path(compare)
        if not path.is_file():
            raise DataError(f"compare file {path} does not exist")
        return path
    for r in runs:
        for candidate in (r.path / "compare.json", r.path / "compare.md", r.path / "compare" / "compare.json"):
            if candidate.is_file():
                return candidate
    return None


def _cell(value) -> str:
    if isinstance(value, dict) and "mean" in value:
        return _mean_std(value)
    if isinstance(value, float):
        return cell(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)[:60]
    return str(value).replace("|", "\\|")


def _table_rows(data) -> list[dict] | None:
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return data
    if isinstance(data, dict):
        for key in ("rows", "models", "results", "table"):
            rows = _table_rows(data.get(key))
            if rows:
                return rows
        for value in data.values():
            if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
                return value
    return None


def compare_markdown(path: Path) -> str:
    """A Markdown table of a ``mednca compare`` output: the Markdown file written beside the JSON
    (or given directly) when there is one, else a table of the JSON's ``rows``."""
    if path.suffix.lower() == ".md":
        return path.read_text().strip()
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read compare file {path} ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("markdown"), str):
        return data["markdown"].strip()
    md = path.with_suffix(".md")
    if md.is_file():
        return md.read_text().strip()
    rows = _table_rows(data)
    if not rows:
        return f"(`{path}` has no table rows; see the file)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def runs_table(runs: Sequence[RunInfo]) -> str:
    """One row per run from its evaluation: model, parameters, Dice, HD95, quality correlation."""
    lines = ["| model | run | parameters | test cases | Dice (mean ± std) | HD95 mm (mean ± std) | "
             "quality ρ vs Dice |", "|---|---|---:|---:|---|---|---:|"]
    for r in runs:
        s = r.results.get("summary", {})
        q = r.results.get("quality") or {}
        lines.append(f"| {r.label} | `{r.path}` | {r.params:,} | {len(r.results.get('cases', []))} | "
                     f"{_mean_std(s.get('dice'))} | {_mean_std(s.get('hd95_mm'), '.2f')} | "
                     f"{cell(q.get('spearman_dice'), '.3f')} |")
    return "\n".join(lines)


# -- robustness --------------------------------------------------------------------------------
def find_robustness(runs: Sequence[RunInfo], robustness: Sequence[str | Path] | None, split: str) -> list[Path]:
    """Robustness output folders: the given ones, else ``RUN/robustness_{split}`` where present."""
    if robustness:
        dirs = [Path(d) for d in robustness]
        for d in dirs:
            if not (d / "robustness.json").is_file():
                raise DataError(f"{d} is not a 'mednca robustness' output folder (no robustness.json)")
        return dirs
    found = [r.folder.robustness_dir(split) for r in runs]
    return list(dict.fromkeys(d for d in found if (d / "robustness.json").is_file()))


def robustness_markdown(dirs: Sequence[Path], out: Path) -> str:
    """Copy the robustness plots into ``out`` and describe them, with a table of mean Dice."""
    parts = []
    for i, d in enumerate(dirs):
        data = json.loads((d / "robustness.json").read_text())
        tag = "" if len(dirs) == 1 else f"_{i + 1}"
        parts.append(f"From `{d}` ({len(data.get('cases', []))} case(s), {data.get('severities')} severities, seed "
                     f"{data.get('seed')}, K = {data.get('ensemble')} passes; per-case rows in "
                     f"`{d / 'robustness.csv'}`).")
        figs = data.get("figures", {})
        for key, title in (("dice", "Mean Dice vs severity"), ("quality", "Mean quality score vs severity")):
            name = figs.get(key)
            if name and (d / name).is_file():
                target = f"robustness{tag}_{key}.png"
                shutil.copyfile(d / name, out / target)
                parts.append(f"**{title}** (one panel per perturbation, one line per model):\n\n"
                             f"![{title}]({target})")
        table = robustness_table(data)
        if table:
            parts.append(table)
    return "\n\n".join(parts)


def robustness_table(data: dict) -> str | None:
    """A Markdown table of a ``robustness.json``: per perturbation and model, mean Dice (and mean
    quality) on the clean images -> at the highest severity; None without a summary."""
    summary, perts, sev = data.get("summary", {}), list(data.get("perturbations", {})), data.get("severities")
    if not (summary and perts and sev):
        return None
    models = list(summary)
    lines = ["| perturbation | max magnitude | " + " | ".join(f"{m}: Dice clean → max (quality)" for m in models)
             + " |", "|---|---|" + "---|" * len(models)]
    for p in perts:
        info = data["perturbations"][p]
        cells = []
        for m in models:
            s = summary[m].get(p, {})
            clean, worst = s.get("0", {}), s.get(str(sev), {})
            cells.append(f"{_change(clean, worst, 'dice_mean')} ({_change(clean, worst, 'quality_mean')})")
        lines.append(f"| {p} | {cell(info['magnitudes'][-1], '.3f')} ({info['unit']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _change(before: dict, after: dict, key: str) -> str:
    return f"{cell(before.get(key), '.3f')} → {cell(after.get(key), '.3f')}"


# -- quality -----------------------------------------------------------------------------------
def quality_scatter(runs: Sequence[RunInfo], path: Path) -> bool:
    """Quality score (x) vs Dice (y), one colour per run that has per-case quality; False if none."""
    with_q = [r for r in runs if r.results.get("cases") and "quality" in r.results["cases"][0]]
    if not with_q:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r in with_q:
        q = [c["quality"] for c in r.results["cases"]]
        d = [c["dice"] for c in r.results["cases"]]
        rho = (r.results.get("quality") or {}).get("spearman_dice")
        ax.scatter(q, d, s=18, alpha=0.75, label=f"{r.label} (ρ = {cell(rho, '.2f')})")
    fail = (with_q[0].results.get("quality") or {}).get("failure_dice", 0.8)
    ax.axhline(fail, color="grey", ls="--", lw=1)
    ax.set_xlabel("quality score (lower = more confident)")
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    return True


def quality_markdown(runs: Sequence[RunInfo]) -> str:
    lines = ["| model | K | quality (mean ± std) | Spearman ρ (quality, Dice) | failures (Dice < 0.8) | "
             "caught by flagging the worst 10 % |", "|---|---:|---|---:|---:|---|"]
    for r in runs:
        q = r.results.get("quality")
        if not q:
            continue
        share = q.get("caught_share")
        caught = "no failures" if share is None else f"{q['failures_caught']}/{q['n_failures']} ({share:.0%})"
        lines.append(f"| {r.label} | {q.get('ensemble')} | {_mean_std(r.results['summary'].get('quality'))} | "
                     f"{cell(q.get('spearman_dice'), '.3f')} | {q.get('n_failures')} | {caught} "
                     f"({q.get('n_flagged')} flagged) |")
    return "\n".join(lines)


# -- example cases -----------------------------------------------------------------------------
def pick_cases(results: dict) -> list[tuple[str, dict]]:
    """(tag, case row) of the best, median and worst case by Dice (fewer when cases repeat)."""
    rows = sorted(results.get("cases", []), key=lambda r: (r["dice"], r["case"]))
    if not rows:
        return []
    picks = [("best", rows[-1]), ("median", rows[len(rows) // 2]), ("worst", rows[0])]
    seen, out = set(), []
    for tag, row in picks:
        if row["case"] not in seen:
            seen.add(row["case"])
            out.append((tag, row))
    return out


def _read_nifti(path: Path) -> np.ndarray | None:
    return read_image(path, None).data if path.is_file() else None


def case_arrays(run: RunInfo, case_id: str, data_dir: Path, split: str, seed: int = 0,
                ensemble: int = 4) -> dict[str, np.ndarray]:
    """Image, binary label, predicted mask and uncertainty (std) of one case, on its own grid.

    The mask and std are the ones ``mednca evaluate`` wrote (``RUN/predictions_{split}/``) when
    they exist; otherwise they are predicted here with ``ensemble`` passes.
    """
    cfg = run.model.config
    cases = {c.case_id: c for c in find_cases(data_dir, cfg.channel)}
    if case_id not in cases:
        raise DataError(f"case {case_id} of {run.path} is not in {data_dir}")
    image, label = read_case(cases[case_id])
    pred_dir = run.folder.predictions(split)
    mask = _read_nifti(pred_dir / f"{case_id}.nii.gz")
    std = _read_nifti(pred_dir / "std" / f"{case_id}.nii.gz")
    if mask is None or std is None:
        pred = predict_oriented(run.model, image.data, image.affine, ensemble, seed)
        mask = pred.mask if mask is None else mask
        std = pred.std if std is None else std
    return {"image": image.data, "label": binarize(label.data, cfg.label), "mask": (mask > 0).astype(np.uint8),
            "std": np.asarray(std, np.float32)}


def best_slice(label: np.ndarray, axis: int, fallback: np.ndarray | None = None) -> int:
    """Index along ``axis`` of the slice with the largest label area (else of ``fallback``, else
    the middle slice)."""
    for m in (label, fallback):
        if m is not None and m.any():
            area = np.moveaxis(m, axis, 0).reshape(m.shape[axis], -1).sum(1)
            return int(area.argmax())
    return label.shape[axis] // 2


def overlay_figure(arrays: dict[str, np.ndarray], axis: int, title: str, path: Path) -> Path:
    """Four panels on the largest-label slice: image, ground truth, prediction, uncertainty."""
    plt = _plt()
    k = best_slice(arrays["label"], axis, arrays["mask"])
    sl = {n: np.take(a, k, axis=axis).T for n, a in arrays.items()}  # rows = 2nd in-plane axis
    fig, axes = plt.subplots(1, 4, figsize=(MAX_WIDTH_IN, 3.4))
    img = dict(cmap="gray", origin="lower", interpolation="nearest")
    axes[0].imshow(sl["image"], **img)
    axes[0].set_title("image")
    for ax, key, colour, name in ((axes[1], "label", "Reds", "ground truth"),
                                  (axes[2], "mask", "Blues", "prediction")):
        ax.imshow(sl["image"], **img)
        ax.imshow(np.ma.masked_where(sl[key] == 0, sl[key]), cmap=colour, vmin=0, vmax=1.3, alpha=0.55,
                  origin="lower", interpolation="nearest")
        ax.set_title(name)
    if sl["label"].any():
        axes[2].contour(sl["label"], levels=[0.5], colors="red", linewidths=0.8, origin="lower")
    im = axes[3].imshow(sl["std"], cmap="magma", vmin=0, vmax=max(0.01, float(sl["std"].max())), origin="lower",
                        interpolation="nearest")
    axes[3].set_title("uncertainty (std)")
    fig.colorbar(im, ax=axes[3], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"{title} — slice {k} along axis {axis}", fontsize=10)
    fig.tight_layout()
    return _savefig(fig, path)


# -- NCA growth animation ----------------------------------------------------------------------
@torch.no_grad()
def nca_frames(model: MedNCA, image: torch.Tensor, generator: torch.Generator | None = None
               ) -> list[tuple[int, int, np.ndarray]]:
    """The NCA's segmentation growing step by step on one slice.

    Runs :meth:`MedNCA.run_levels` with one ``NCALevel.step`` at a time, so the frames are
    exactly what :meth:`MedNCA.forward` computes at inference (the same generator draws give the
    same result).

    Args:
        model: A :class:`~mednca.nn.model.MedNCA`.
        image: (1, 1, S, S) normalised slice.

    Returns:
        ``(level, step, probability)`` per frame, the probability being sigmoid(channel 1) as an
        (S, S) array (level 1 up-scaled, nearest); frame 0 is the seed state.
    """
    frames = []

    def grab(index: int, step: int, state: torch.Tensor) -> None:
        if index == 1:
            state = F.interpolate(state, scale_factor=float(model.config.scale), mode="nearest")
        frames.append((index, step, torch.sigmoid(state[0, 1]).cpu().numpy()))

    def run_level(level, state: torch.Tensor, index: int) -> torch.Tensor:
        if index == 1:
            grab(1, 0, state)
        for k in range(model.config.level_steps(index)):
            state = level.step(state, generator)
            grab(index, k + 1, state)
        return state

    model.run_levels(image, run_level)
    return frames


def growth_gif(run: RunInfo, arrays: dict[str, np.ndarray], path: Path, seed: int = 0, fps: int = 4) -> int:
    """Write a GIF of the NCA growing on the case's largest-label slice; returns the frame count."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    plt = _plt()
    cfg = run.model.config
    k = best_slice(arrays["label"], cfg.axis, arrays["mask"])
    img = image_slices(arrays["image"], cfg.axis, cfg.image_size, cfg.interpolation, cfg.normalization)[k:k + 1]  # (1, 1, S, S)
    lab = label_slices(arrays["label"], cfg.axis, cfg.image_size)[k, 0].numpy()
    frames = nca_frames(run.model, img, torch.Generator().manual_seed(seed))
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4))
    axes[0].imshow(img[0, 0].numpy().T, cmap="gray", origin="lower")
    if lab.any():
        axes[0].contour(lab.T, levels=[0.5], colors="red", linewidths=0.8, origin="lower")
    axes[0].set_title("image + ground truth", fontsize=9)
    shown = axes[1].imshow(frames[0][2].T, cmap="viridis", vmin=0, vmax=1, origin="lower", interpolation="nearest")
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_axis_off()
    title = axes[1].set_title("", fontsize=9)
    fig.tight_layout()

    def draw(i: int):
        level, step, prob = frames[i]
        shown.set_data(prob.T)
        where = f"1/{cfg.scale} resolution" if level == 1 else "full resolution"
        title.set_text(f"level {level} ({where}), step {step}/{cfg.level_steps(level)}")
        return shown, title

    anim = FuncAnimation(fig, draw, frames=len(frames), blit=False)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        anim.save(str(tmp), writer=PillowWriter(fps=fps), dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return len(frames)


# -- the report --------------------------------------------------------------------------------
def make_report(runs: Sequence[str | Path], out_dir: str | Path = "report", *, compare: str | Path | None = None,
                robustness: Sequence[str | Path] | None = None, split: str = "test",
                data_dir: str | Path | None = None, seed: int = 0, overwrite: bool = False,
                log: Callable[[str], None] | None = None) -> Path:
    """Write ``out_dir/README.md`` and its figures (see the module docstring).

    Args:
        runs: Evaluated run folders (``mednca evaluate RUN --split SPLIT``; with ``--ensemble K``
            for the quality section).
        compare: A ``mednca compare`` JSON (default: one found in a run folder, if any).
        robustness: ``mednca robustness`` output folders (default: ``RUN/robustness_{split}``).
        data_dir: Task folder for the example cases (default: each run's training data).
        seed: Seed of the fire masks for anything predicted here (uncertainty maps, the GIF).

    Returns:
        The path of the Markdown file.
    """
    require_extras("matplotlib")
    out = Path(out_dir)
    md_path = check_output(out / "README.md", overwrite)
    infos = load_runs(runs, split)
    out.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    md = [f"# mednca report\n\nmednca {__version__}, {now}; `{split}` split.",
          "Dice is computed on hard 3D masks on the label grid; HD95 in mm (see mednca's docs/cli.md, evaluate)."]
    md += _comparison_section(infos, compare, split)
    md += _robustness_section(infos, robustness, split, out)
    md += _quality_section(infos, split, out)
    md += _examples_section(infos, out, split, data_dir, seed, log or (lambda s: None))
    atomic_write_text(md_path, "\n\n".join(md) + "\n")
    return md_path


def _comparison_section(infos: Sequence[RunInfo], compare: str | Path | None, split: str) -> list[str]:
    md = ["## Comparison"]
    cmp_path = find_compare(infos, compare)
    if cmp_path is not None:
        md.append(f"From `{cmp_path}`:\n\n{compare_markdown(cmp_path)}")
        md.append(f"Per run (`eval_{split}.json`):\n\n{runs_table(infos)}")
    else:
        md.append(runs_table(infos))
    return md


def _robustness_section(infos: Sequence[RunInfo], robustness: Sequence[str | Path] | None, split: str,
                        out: Path) -> list[str]:
    md = ["## Robustness"]
    rob_dirs = find_robustness(infos, robustness, split)
    if rob_dirs:
        md.append("Each model segments the same perturbed test volumes (MRI artefacts via TorchIO; "
                  "translation and zoom in-plane, with the label moved alike). Severity 0 is the clean image.")
        md.append(robustness_markdown(rob_dirs, out))
    else:
        md.append(f"No robustness results (run `mednca robustness RUN ... --split {split}` and pass "
                  "`--robustness DIR`).")
    return md


def _quality_section(infos: Sequence[RunInfo], split: str, out: Path) -> list[str]:
    md = ["## Quality estimate without ground truth"]
    if quality_scatter(infos, out / "quality_vs_dice.png"):
        md.append(f"Per case, from K stochastic passes: {DEFINITION}. Cases below the dashed line "
                  "(Dice < 0.8) count as failures; the worst-scored 10 % of cases are flagged.")
        md.append(quality_markdown(infos))
        md.append("![quality score vs Dice](quality_vs_dice.png)")
    else:
        md.append(f"No per-case quality scores: evaluate with `mednca evaluate RUN --split {split} --ensemble 4`.")
    return md


def _examples_section(infos: Sequence[RunInfo], out: Path, split: str, data_dir: str | Path | None, seed: int,
                      say: Callable[[str], None]) -> list[str]:
    md = ["## Example test cases",
          "Best, median and worst case by Dice; the slice with the largest label area. Panels: "
          "image, ground truth (red), prediction (blue, ground-truth contour in red), per-voxel "
          "standard deviation over the stochastic passes."]
    for r in infos:
        md.append(f"### {r.label}")
        if data_dir or r.folder.info_file.is_file():
            md += _run_examples(r, r.folder.data_dir(data_dir), out, split, seed, say)
        else:
            md.append(f"(no data folder known for `{r.path}`; pass `--data`)")
    return md


def _run_examples(r: RunInfo, data_dir: Path, out: Path, split: str, seed: int,
                  say: Callable[[str], None]) -> list[str]:
    """Overlays of the run's best, median and worst case, and (Med-NCA) the growth GIF of the median one."""
    md = []
    median_arrays = None
    for tag, row in pick_cases(r.results):
        arrays = case_arrays(r, row["case"], data_dir, split, seed)
        name = f"case_{r.slug}_{tag}.png"
        overlay_figure(arrays, r.model.config.axis, f"{r.label}: {tag} case {row['case']}, Dice "
                       f"{row['dice']:.3f}", out / name)
        md.append(f"**{tag}**: `{row['case']}`, Dice {row['dice']:.3f}"
                  + (f", quality {row['quality']:.4g}" if "quality" in row else "")
                  + f"\n\n![{tag} case {row['case']}]({name})")
        if tag == "median" or median_arrays is None:
            median_arrays = (row, arrays)
        say(f"report: {r.label} {tag} case {row['case']}")
    if isinstance(r.model, MedNCA) and median_arrays is not None:
        row, arrays = median_arrays
        gif = f"nca_growth_{r.slug}.gif"
        n = growth_gif(r, arrays, out / gif, seed)
        md.append(f"**NCA growth** on case `{row['case']}` ({n} frames: level 1 on the image down-scaled "
                  f"×{r.model.config.scale}, then level 2 at full resolution; sigmoid of the logit "
                  f"channel):\n\n![NCA growth]({gif})")
    return md
