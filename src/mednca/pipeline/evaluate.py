"""Evaluation: predicted masks vs reference labels -> per-case metrics -> JSON and CSV.

Dice is computed on hard 3D masks on the label's own voxel grid: two empty masks score 1, one
empty and one non-empty mask score 0. HD95 is in mm (from the label's affine) and is left out
(``null``) of the summary when either mask is empty.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.cases import Case, find_cases, nifti_files
from ..data.runfolder import RunFolder
from ..data.volumes import binarize, read_label
from ..errors import DataError
from ..formats import csv_number, write_json
from ..fsutil import atomic_path, check_output
from ..nn.base import SegmentationModel
from ..nn.build import load_model
from .metrics import case_metrics, summarize
from .predict import predict_case
from .quality import add_quality, quality_score

METRICS = ("dice", "hd95_mm", "volume_pred_ml", "volume_gt_ml")
CONVENTIONS = ("Dice on hard 3D masks on the label grid; both empty = 1, one empty = 0. "
               "HD95 = larger of the two directed 95th percentiles of surface distances, in mm; undefined (null) "
               "when either mask is empty and left out of its summary.")


def evaluate_pairs(pairs: list[tuple[str, Path, Path]], label: int | None = None,
                   progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Metrics for (case id, prediction file, label file) triples.

    Predictions are binarised as > 0; labels with ``label`` (None = all labels > 0 merged).

    Returns:
        ``{"cases": [per-case dicts], "summary": {metric: {mean, std, ...}}, "conventions": str}``
    """
    if not pairs:
        raise DataError("nothing to evaluate: no cases")
    rows = []
    for i, (case_id, pred_path, gt_path) in enumerate(pairs):
        pred, gt = read_label(pred_path), read_label(gt_path)
        if pred.data.shape != gt.data.shape:
            raise DataError(f"case {case_id}: prediction shape {pred.data.shape} differs from label "
                            f"shape {gt.data.shape}")
        if not np.allclose(pred.affine, gt.affine, atol=1e-3):
            raise DataError(f"case {case_id}: prediction and label have different affines")
        rows.append({"case": case_id, **case_metrics(pred.data > 0, binarize(gt.data, label), gt.spacing)})
        if progress:
            progress(i + 1, len(pairs), case_id)
    return {"cases": rows, "summary": summarize(rows, METRICS), "conventions": CONVENTIONS}


def match_folders(pred_dir: str | Path, gt_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair prediction files with label files by case id.

    ``gt_dir`` may be a label folder or a task folder with ``labelsTr/``. Every prediction
    needs a label; labels without a prediction are an error too (a missing case is not a pass).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d in (pred_dir, gt_dir):
        if not d.is_dir():
            raise DataError(f"folder {d} does not exist")
    if (gt_dir / "labelsTr").is_dir():
        gt_dir = gt_dir / "labelsTr"
    preds, gts = nifti_files(pred_dir), nifti_files(gt_dir)
    if not preds:
        raise DataError(f"no predicted masks (.nii.gz) in {pred_dir}")
    missing_gt = sorted(set(preds) - set(gts))
    if missing_gt:
        raise DataError(f"{len(missing_gt)} prediction(s) without a label in {gt_dir}, e.g. {missing_gt[0]}")
    missing_pred = sorted(set(gts) - set(preds))
    if missing_pred:
        raise DataError(f"{len(missing_pred)} label(s) without a prediction in {pred_dir}, e.g. {missing_pred[0]}")
    return [(cid, preds[cid], gts[cid]) for cid in sorted(preds)]


def write_results(results: dict, out_json: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write results to JSON and a CSV beside it (per-case rows, then mean and std rows)."""
    out_json = Path(out_json)
    out_csv = out_json.with_suffix(".csv")
    for p in (out_json, out_csv):
        check_output(p, overwrite)
    write_json(out_json, results)
    with atomic_path(out_csv) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        cols = [*METRICS, *(["quality"] if "quality" in results["summary"] else [])]
        writer.writerow(["case", *cols])
        for row in results["cases"]:
            writer.writerow([row["case"], *(csv_number(row[m]) for m in cols)])
        for stat in ("mean", "std"):
            writer.writerow([stat, *(csv_number(results["summary"][m][stat]) for m in cols)])
    return out_json, out_csv


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, out_json: str | Path | None = None, *,
                     label: int | None = None, overwrite: bool = False) -> dict:
    """Evaluate a folder of predicted masks against a folder of labels; optionally write results."""
    results = evaluate_pairs(match_folders(pred_dir, gt_dir), label)
    if out_json is not None:
        write_results(results, out_json, overwrite)
    return results


def evaluate_run(run_dir: str | Path, split: str = "test", *, data_dir: str | Path | None = None,
                 ensemble: int = 1, seed: int = 0, overwrite: bool = False,
                 progress: Callable[[int, int, str], None] | None = None,
                 output: str | Path | None = None) -> tuple[dict, Path]:
    """Predict a run's ``split`` cases with its best checkpoint and evaluate them.

    Writes masks to ``RUN/predictions_{split}/`` and results to ``output`` (default
    ``RUN/eval_{split}.json``), with a CSV beside it.
    With ``ensemble >= 2`` each case also gets a ground-truth-free ``quality`` score and the
    results a ``quality`` block (Spearman vs Dice, failures caught; see :mod:`mednca.pipeline.quality`).

    Returns:
        (results, path of the JSON file)
    """
    run = RunFolder.open(run_dir, "run.json")
    wanted = set(run.split_ids(split))
    data_dir = run.data_dir(data_dir)
    model = load_model(run.path)
    cases = [c for c in find_cases(data_dir, model.config.channel) if c.case_id in wanted]
    if len(cases) != len(wanted):
        raise DataError(f"{len(wanted) - len(cases)} {split} case(s) of the run are missing in {data_dir}")
    out_json = Path(output) if output is not None else run.eval_file(split)
    check_output(out_json, overwrite)
    results = evaluate_cases(model, cases, run.predictions(split), ensemble, seed, progress)
    results["run"] = str(run.path)
    results["split"] = split
    results["ensemble"] = ensemble
    write_results(results, out_json, overwrite)
    return results, out_json


def evaluate_cases(model: SegmentationModel, cases: list[Case], pred_dir: Path, ensemble: int = 1, seed: int = 0,
                   progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Predict labelled cases into ``pred_dir`` and evaluate them (as :func:`evaluate_pairs`; with
    ``ensemble >= 2`` also the quality scores, as :func:`mednca.pipeline.quality.add_quality`)."""
    pairs, scores = _predict_cases(model, cases, pred_dir, ensemble, seed, progress)
    results = evaluate_pairs(pairs, model.config.label)
    if ensemble > 1:
        add_quality(results, scores, ensemble)
    return results


def _predict_cases(model: SegmentationModel, cases: list[Case], pred_dir: Path, ensemble: int, seed: int,
                   progress: Callable[[int, int, str], None] | None,
                   ) -> tuple[list[tuple[str, Path, Path]], dict[str, float]]:
    """Predict each case into ``pred_dir``: ((case id, mask file, label file) pairs, quality scores by
    case id (with ``ensemble >= 2``, else empty))."""
    pairs = []
    scores: dict[str, float] = {}
    for i, case in enumerate(cases):
        mask = pred_dir / f"{case.case_id}.nii.gz"
        extra = [pred_dir / "prob" / mask.name, pred_dir / "std" / mask.name] if ensemble > 1 else []
        pred, _ = predict_case(model, case.image, case.channel, [mask, *extra], ensemble, seed)
        if ensemble > 1:  # quality estimate without ground truth, from the K passes' spread
            scores[case.case_id] = quality_score(pred.probability, pred.std)
        pairs.append((case.case_id, mask, case.label))
        if progress:
            progress(i + 1, len(cases), case.case_id)
    return pairs, scores
