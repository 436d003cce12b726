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
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import CheckpointError, DataError, MedNCAError
from ..fsutil import atomic_write_text, check_output
from ..runtime import peak_rss_mb

#: Slices of the synthetic volume timed when a run's test case cannot be read.
SYNTHETIC_SLICES = 32
CONVENTIONS = ("CPU inference (PyTorch, eval mode, one pass): per slice = one image_size² slice, per volume = "
               "predict_volume on the run's first test case (else a synthetic volume), median of the repeats "
               "after one warm-up. Peak RSS = peak resident memory (VmHWM on Linux, else ru_maxrss) of a fresh "
               "process that loads the model and runs the timings; increase = over the same process right "
               "after importing torch, MONAI and mednca. "
               "Test Dice/HD95 from the run's eval_test.json.")


def _timing_volume(run: Path, config) -> tuple[Any, str]:
    """(volume array, where it came from): the run's first test case, else a synthetic volume."""
    import numpy as np

    try:
        split = json.loads((run / "split.json").read_text())
        data_dir = Path(json.loads((run / "run.json").read_text())["data"])
        from ..data.cases import find_cases
        from ..data.volumes import read_image

        for case_id in split.get("test", []):
            cases = [c for c in find_cases(data_dir, config.channel) if c.case_id == case_id]
            if cases:
                return read_image(cases[0].image, cases[0].channel).data, f"test case {case_id}"
    except (OSError, KeyError, ValueError, MedNCAError):
        pass  # no readable test case: time a synthetic volume instead
    shape = [config.image_size] * 3
    shape[config.axis] = SYNTHETIC_SLICES
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    return volume, f"synthetic {'x'.join(map(str, shape))}"


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def measure_run(run: str | Path, *, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """Inference timings of a run's best checkpoint in this process (no memory figures).

    Returns:
        ``{"model", "parameters", "image_size", "ms_per_slice", "ms_per_volume", "volume_shape",
        "volume_source", "threads", "repeats"}``.
    """
    import torch

    from ..nn.build import load_model
    from ..pipeline.predict import predict_volume

    if threads:
        torch.set_num_threads(threads)
    run = Path(run)
    model = load_model(run).eval()
    cfg = model.config
    volume, source = _timing_volume(run, cfg)
    g = torch.Generator().manual_seed(0)
    image = torch.rand((1, 1, cfg.image_size, cfg.image_size), generator=g)
    with torch.no_grad():
        ms_slice = _median_ms(lambda: model.predict_proba(image, 1, g), repeats)
        ms_volume = _median_ms(lambda: predict_volume(model, volume, 1, g), repeats)
    return {"model": cfg.model, "parameters": model.num_parameters(), "image_size": cfg.image_size,
            "ms_per_slice": ms_slice, "ms_per_volume": ms_volume, "volume_shape": list(volume.shape),
            "volume_source": source, "threads": torch.get_num_threads(), "repeats": max(1, repeats)}


def measure_run_isolated(run: str | Path, *, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """:func:`measure_run` plus peak memory, in a fresh ``python -m mednca.experiments.compare --measure`` process.

    Adds ``rss_peak_mb`` (the process's peak RSS) and ``rss_increase_mb`` (over its RSS right after
    importing torch, MONAI and mednca) and ``rss_baseline_mb``.
    """
    cmd = [sys.executable, "-m", "mednca.experiments.compare", "--measure", str(run), "--json", "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise MedNCAError(f"measuring {run} failed: {tail}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise MedNCAError(f"measuring {run} gave no result ({exc}): {proc.stdout[-200:]!r}") from exc


def _eval_fields(run: Path, evaluate: bool) -> dict[str, Any]:
    path = run / "eval_test.json"
    if not path.is_file() and evaluate:
        from ..pipeline.evaluate import evaluate_run

        evaluate_run(run, "test")
    if not path.is_file():
        return {"dice_mean": None, "dice_std": None, "hd95_mean_mm": None, "test_cases": None,
                "eval_ensemble": None,
                "note": f"no eval_test.json: run `mednca evaluate {run}` first (or `mednca compare --evaluate`)"}
    try:
        results = json.loads(path.read_text())
        summary = results["summary"]
        return {"dice_mean": summary["dice"]["mean"], "dice_std": summary["dice"]["std"],
                "hd95_mean_mm": summary["hd95_mm"]["mean"], "test_cases": len(results["cases"]),
                "eval_ensemble": results.get("ensemble"), "note": None}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a mednca evaluation result ({exc}); rerun "
                        f"`mednca evaluate {run} --overwrite`") from exc


def _check_run(run: Path) -> Path:
    from ..checkpoint import resolve_checkpoint

    if not run.is_dir():
        raise DataError(f"{run} is not a run folder")
    try:
        return resolve_checkpoint(run)
    except CheckpointError as exc:
        raise DataError(f"{run} is not a trained run folder ({exc})") from exc


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
    checked = [(Path(r), _check_run(Path(r))) for r in runs]  # every run is checked before any work
    rows = []
    for run, ckpt in checked:
        if log:
            log(f"measuring {run} ...")
        evaluated = _eval_fields(run, evaluate)
        measured = (measure_run_isolated(run, repeats=repeats, threads=threads) if isolate
                    else measure_run(run, repeats=repeats, threads=threads))
        row = {"run": str(run), "name": run.name, "model": measured["model"],
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
def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, fmt)


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
            dice = f"{_num(row['dice_mean'], '.4f')} ± {_num(row['dice_std'], '.4f')}"
        shape = "×".join(map(str, row.get("volume_shape") or [])) or "–"
        cells = [row["name"], row["model"], f"{row['parameters']:,}", _size(row["checkpoint_bytes"]), dice,
                 _num(row.get("hd95_mean_mm"), ".2f"), _num(row.get("ms_per_slice"), ".2f"),
                 _num(row.get("ms_per_volume"), ".1f"), shape, _num(row.get("rss_peak_mb"), ".0f"),
                 _num(row.get("rss_increase_mb"), ".0f")]
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
    atomic_write_text(out_json, json.dumps({"rows": list(rows), "conventions": CONVENTIONS}, indent=2) + "\n")
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
    # Everything inference needs is imported before the baseline, so the increase is the model's.
    import nibabel  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401

    from .. import checkpoint  # noqa: F401
    from ..nn import build  # noqa: F401
    from ..pipeline import predict  # noqa: F401
    from ..data import cases, slices, volumes  # noqa: F401
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
