"""Compare trained runs side by side (Med-NCA against the UNet baselines, or any runs).

For each run folder :func:`compare_runs` reports:

* the model type and its trainable parameters;
* the checkpoint's size on disk (bytes of ``checkpoints/best.safetensors``, else ``last``);
* test Dice mean ± std and HD95 mean from the run's ``eval_test.json`` (written by
  ``mednca evaluate RUN``; with ``evaluate=True`` it is computed when missing);
* CPU inference time: median over ``repeats`` of one slice at the run's ``image_size`` and of
  one whole volume (the run's first test case, else a synthetic volume of 32 slices), after
  one untimed warm-up call;
* peak memory of inference: the peak RSS (``ru_maxrss``; on Linux ``VmHWM``, see
  :func:`peak_rss_mb`) of a fresh process (``python -m mednca.experiments.compare --measure RUN --json``) that
  imports torch, MONAI and mednca, loads the model and runs the timings above; reported in total
  and as the increase over the same process right after the imports.

:func:`markdown_table` renders the rows; :func:`write_comparison` writes the table and a JSON file
beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel  # noqa: F401  (imported before the measuring process's baseline: reading volumes needs it)
import numpy as np
import torch

from ..config import MedNCAConfig
from ..data.cases import find_cases
from ..data.runfolder import RunFolder
from ..data.volumes import read_image
from ..errors import CheckpointError, DataError, MedNCAError
from ..formats import MISSING, cell, write_json
from ..fsutil import atomic_write_text, check_output
from ..nn.build import load_model
from ..pipeline.evaluate import evaluate_run
from ..pipeline.predict import predict_volume
from ..runtime import peak_rss_mb, run_json_process, time_calls

#: Slices of the synthetic volume timed when a run's test case cannot be read.
SYNTHETIC_SLICES = 32
CONVENTIONS = ("CPU inference (PyTorch, eval mode, one pass): per slice = one image_size² slice, per volume = "
               "predict_volume on the run's first test case (else a synthetic volume), median of the repeats "
               "after one warm-up. Peak RSS = peak resident memory (VmHWM on Linux, else ru_maxrss) of a fresh "
               "process that loads the model and runs the timings; increase = over the same process right "
               "after importing torch, MONAI and mednca. "
               "Test Dice/HD95 from the run's eval_test.json.")


def _timing_volume(run: RunFolder, config: MedNCAConfig) -> tuple[np.ndarray, str]:
    """(volume array, where it came from): the run's first test case, else a synthetic volume."""
    try:
        ids = run.split_ids("test")
        found = {c.case_id: c for c in find_cases(run.data_dir(), config.channel)}
        case = next((found[i] for i in ids if i in found), None)
        if case is not None:
            return read_image(case.image, case.channel).data, f"test case {case.case_id}"
    except (OSError, KeyError, ValueError, MedNCAError):
        pass  # no readable test case: time a synthetic volume instead
    shape = [config.image_size] * 3
    shape[config.axis] = SYNTHETIC_SLICES
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    return volume, f"synthetic {'x'.join(map(str, shape))}"


def measure_run(run: str | Path, *, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """Inference timings of a run's best checkpoint in this process (no memory figures).

    Returns:
        ``{"model", "parameters", "image_size", "ms_per_slice", "ms_per_volume", "volume_shape",
        "volume_source", "threads", "repeats"}``.
    """
    if threads:
        torch.set_num_threads(threads)
    run = RunFolder(run)
    model = load_model(run.path).eval()
    cfg = model.config
    volume, source = _timing_volume(run, cfg)
    g = torch.Generator().manual_seed(0)
    image = torch.rand((1, 1, cfg.image_size, cfg.image_size), generator=g)
    with torch.no_grad():
        ms_slice = time_calls(lambda: model.predict_proba(image, 1, g), repeats).median_ms
        ms_volume = time_calls(lambda: predict_volume(model, volume, 1, g), repeats).median_ms
    return {"model": cfg.model, "parameters": model.num_parameters(), "image_size": cfg.image_size,
            "ms_per_slice": ms_slice, "ms_per_volume": ms_volume, "volume_shape": list(volume.shape),
            "volume_source": source, "threads": torch.get_num_threads(), "repeats": max(1, repeats)}


def measure_run_isolated(run: str | Path, *, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """:func:`measure_run` plus peak memory, in a fresh ``python -m mednca.experiments.compare --measure`` process.

    Adds ``rss_peak_mb`` (the process's peak RSS) and ``rss_increase_mb`` (over its RSS right after
    importing torch, MONAI and mednca) and ``rss_baseline_mb``.
    """
    args = ["-m", "mednca.experiments.compare", "--measure", str(run), "--json", "--repeats", str(repeats)]
    if threads:
        args += ["--threads", str(threads)]
    proc = run_json_process(args)
    if proc.returncode != 0:
        raise MedNCAError(f"measuring {run} failed: {(proc.stderr_tail or ['(no output)'])[-1]}")
    if proc.result is None:
        raise MedNCAError(f"measuring {run} gave no result (its last line of output is not a JSON object)")
    return proc.result


def _eval_fields(run: RunFolder, evaluate: bool) -> dict[str, Any]:
    """The run's test Dice / HD95 from ``eval_test.json`` (computed first with ``evaluate``)."""
    path = run.eval_file("test")
    if not path.is_file() and evaluate:
        evaluate_run(run.path, "test")
    if not path.is_file():
        return {"dice_mean": None, "dice_std": None, "hd95_mean_mm": None, "test_cases": None,
                "eval_ensemble": None,
                "note": f"no eval_test.json: run `mednca evaluate {run.path}` first (or `mednca compare --evaluate`)"}
    try:
        results = run.eval_results("test")
        summary = results["summary"]
        return {"dice_mean": summary["dice"]["mean"], "dice_std": summary["dice"]["std"],
                "hd95_mean_mm": summary["hd95_mm"]["mean"], "test_cases": len(results["cases"]),
                "eval_ensemble": results.get("ensemble"), "note": None}
    except (DataError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a mednca evaluation result ({exc.__cause__ or exc}); rerun "
                        f"`mednca evaluate {run.path} --overwrite`") from exc


def _check_run(path: str | Path) -> tuple[RunFolder, Path]:
    """(the run folder, its checkpoint), if ``path`` is a trained run folder."""
    run = RunFolder(path)
    if not run.path.is_dir():
        raise DataError(f"{run.path} is not a run folder")
    try:
        return run, run.checkpoint()
    except CheckpointError as exc:
        raise DataError(f"{run.path} is not a trained run folder ({exc})") from exc


def compare_runs(runs: Sequence[str | Path], *, evaluate: bool = False, repeats: int = 5,
                 threads: int | None = None, isolate: bool = True,
                 log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row of size, accuracy, speed and memory figures per run folder (see the module doc).

    Args:
        runs: Run folders (written by ``mednca train``).
        evaluate: Compute ``eval_test.json`` (with :func:`mednca.pipeline.evaluate.evaluate_run`) where it
            is missing; otherwise such a run's Dice/HD95 are ``None`` and ``note`` says what to do.
        repeats: Timed repeats per measurement (the median is reported).
        threads: torch threads for the timings (default: torch's default).
        isolate: Measure each run in a fresh process (needed for the memory figures); False
            measures in this process and leaves the ``rss_*`` fields ``None``.
        log: Where progress messages go.

    Returns:
        Rows with ``run``, ``name``, ``model``, ``parameters``, ``checkpoint``,
        ``checkpoint_bytes``, ``dice_mean``, ``dice_std``, ``hd95_mean_mm``, ``test_cases``,
        ``eval_ensemble``, ``image_size``, ``ms_per_slice``, ``ms_per_volume``, ``volume_shape``,
        ``volume_source``, ``rss_peak_mb``, ``rss_increase_mb``, ``rss_baseline_mb``, ``threads``,
        ``repeats``, ``note``.

    Raises:
        DataError: A path is not a trained run folder, or its eval_test.json is unreadable.
    """
    if not runs:
        raise DataError("nothing to compare: give at least one run folder")
    checked = [_check_run(r) for r in runs]  # every run is checked before any work
    rows = []
    for run, ckpt in checked:
        if log:
            log(f"measuring {run.path} ...")
        evaluated = _eval_fields(run, evaluate)
        measured = (measure_run_isolated(run.path, repeats=repeats, threads=threads) if isolate
                    else measure_run(run.path, repeats=repeats, threads=threads))
        row = {"run": str(run.path), "name": run.path.name, "model": measured["model"],
               "parameters": measured["parameters"], "checkpoint": str(ckpt),
               "checkpoint_bytes": ckpt.stat().st_size}
        row.update({k: v for k, v in evaluated.items() if k != "note"})
        row.update({k: measured.get(k) for k in ("image_size", "ms_per_slice", "ms_per_volume", "volume_shape",
                                                  "volume_source", "rss_peak_mb", "rss_increase_mb",
                                                  "rss_baseline_mb", "threads", "repeats")})
        row["note"] = evaluated["note"]
        rows.append(row)
    return rows


# -- output ------------------------------------------------------------------------------
def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`compare_runs` as a Markdown table, with notes below it."""
    head = ["run", "model", "parameters", "checkpoint", "test Dice", "HD95 (mm)", "ms / slice",
            "ms / volume", "volume", "peak RSS (MB)", "RSS increase (MB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    missing = []
    for row in rows:
        if row.get("dice_mean") is None:
            missing.append(row)
            dice = "n/a¹"
        else:
            dice = f"{cell(row['dice_mean'], '.4f')} ± {cell(row['dice_std'], '.4f')}"
        shape = "×".join(map(str, row.get("volume_shape") or [])) or MISSING
        cells = [row["name"], row["model"], f"{row['parameters']:,}", _size(row["checkpoint_bytes"]), dice,
                 cell(row.get("hd95_mean_mm"), ".2f"), cell(row.get("ms_per_slice"), ".2f"),
                 cell(row.get("ms_per_volume"), ".1f"), shape, cell(row.get("rss_peak_mb"), ".0f"),
                 cell(row.get("rss_increase_mb"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    threads = sorted({row.get("threads") for row in rows if row.get("threads")})
    repeats = sorted({row.get("repeats") for row in rows if row.get("repeats")})
    lines += ["", f"CPU, {'/'.join(map(str, threads)) or '?'} torch thread(s), median of "
                  f"{'/'.join(map(str, repeats)) or '?'} repeats. {CONVENTIONS}"]
    if missing:
        lines.append("¹ no eval_test.json: run " + ", ".join(f"`mednca evaluate {r['run']}`" for r in missing)
                     + " first (or `mednca compare --evaluate`).")
    return "\n".join(lines) + "\n"


def write_comparison(rows: Sequence[dict[str, Any]], out_md: str | Path, *, overwrite: bool = False,
                     table: str | None = None) -> tuple[Path, Path]:
    """Write the Markdown table to ``out_md`` and the rows as JSON beside it (same name, .json).

    Raises:
        OutputExistsError: A file exists and ``overwrite`` is False (checked before writing).
    """
    out_md = Path(out_md)
    out_json = comparison_json_path(out_md)
    for p in (out_md, out_json):
        check_output(p, overwrite)
    atomic_write_text(out_md, table if table is not None else markdown_table(rows))
    write_json(out_json, {"rows": list(rows), "conventions": CONVENTIONS})
    return out_md, out_json


def comparison_json_path(out_md: str | Path) -> Path:
    """The JSON file written beside a comparison table (``table.md`` -> ``table.json``)."""
    out_md = Path(out_md)
    return out_md.with_suffix(".json") if out_md.suffix != ".json" else out_md.with_name(out_md.name + ".json")


# -- the measuring process -----------------------------------------------------------------
def _measure_main(argv: Sequence[str] | None = None) -> int:
    """``python -m mednca.experiments.compare --measure RUN --json``: one run's timings and peak memory."""
    parser = argparse.ArgumentParser(prog="python -m mednca.experiments.compare",
                                     description="Measure one run's CPU inference time and peak memory.")
    parser.add_argument("--measure", required=True, metavar="RUN", help="run folder")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    # Everything inference needs is imported before the baseline (torch, nibabel and mednca's
    # modules at the top of this module), so the increase is the model's.
    try:
        import monai.networks.nets  # noqa: F401
    except ImportError:  # only UNet runs need it (and fail to load without it)
        pass
    baseline = peak_rss_mb()
    try:
        result = measure_run(args.measure, repeats=args.repeats, threads=args.threads)
    except MedNCAError as exc:
        print(f"mednca: error: {exc}", file=sys.stderr)
        return 1
    peak = peak_rss_mb()
    result.update(rss_peak_mb=peak, rss_baseline_mb=baseline, rss_increase_mb=peak - baseline)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(_measure_main())
