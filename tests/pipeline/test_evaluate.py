"""Evaluation: hand-made masks -> per-case metrics, summary, JSON and CSV; evaluate_run on a tiny run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mednca.data.synthetic import make_synthetic_dataset
from mednca.errors import DataError, OutputExistsError
from mednca.pipeline.evaluate import evaluate_folders, evaluate_run, match_folders
from mednca.pipeline.train import train

SHAPE = (6, 6, 4)
AFFINE = np.diag([2.0, 1.0, 3.0, 1.0])


def write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, np.uint8), affine), str(path))
    return path


def vox(*points) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    for p in points:
        m[p] = 1
    return m


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Three cases: a (Dice 4/7), b (both empty), c (identical, label value 2)."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    write(pred / "a.nii.gz", vox((1, 1, 1), (1, 2, 1), (1, 3, 1)))
    write(gt / "a.nii.gz", vox((1, 2, 1), (1, 3, 1), (2, 2, 1), (2, 3, 1)))
    write(pred / "b.nii.gz", vox())
    write(gt / "b.nii.gz", vox())
    c = vox((3, 3, 2), (3, 4, 2))
    write(pred / "c.nii.gz", c)
    write(gt / "c.nii.gz", 2 * c)
    return pred, gt


DICE = [4 / 7, 1.0, 1.0]


def test_evaluate_folders_values(folders, tmp_path: Path) -> None:
    results = evaluate_folders(*folders)
    rows = results["cases"]
    assert [r["case"] for r in rows] == ["a", "b", "c"]
    assert [r["dice"] for r in rows] == pytest.approx(DICE)
    assert math.isnan(rows[1]["hd95_mm"]) and rows[2]["hd95_mm"] == 0.0
    # a: pred surface (1,1,1) is 1 voxel along y from gt; gt (2,*,1) is 1 voxel (2 mm) along x from pred
    assert rows[0]["hd95_mm"] == pytest.approx(np.percentile([1, 0, 0, 0, 0, 2, 2], 95))
    assert rows[0]["volume_pred_ml"] == pytest.approx(3 * 6 / 1000)
    assert rows[0]["volume_gt_ml"] == pytest.approx(4 * 6 / 1000)
    s = results["summary"]
    assert s["dice"]["mean"] == pytest.approx(np.mean(DICE))
    assert s["dice"]["std"] == pytest.approx(np.std(DICE))
    assert s["dice"]["n"] == 3 and s["hd95_mm"]["n"] == 2
    assert s["hd95_mm"]["mean"] == pytest.approx(rows[0]["hd95_mm"] / 2)


def test_evaluate_folders_single_label(folders) -> None:
    results = evaluate_folders(*folders, label=1)
    assert [r["dice"] for r in results["cases"]] == pytest.approx([4 / 7, 1.0, 0.0])


def test_evaluate_folders_writes_json_and_csv(folders, tmp_path: Path) -> None:
    out = tmp_path / "res" / "results.json"
    evaluate_folders(*folders, out)
    data = json.loads(out.read_text())
    assert [r["case"] for r in data["cases"]] == ["a", "b", "c"]
    assert data["cases"][1]["hd95_mm"] is None
    assert data["cases"][0]["dice"] == pytest.approx(4 / 7)
    assert data["summary"]["dice"]["mean"] == pytest.approx(np.mean(DICE))
    assert "both empty = 1" in data["conventions"]
    rows = list(csv.reader((tmp_path / "res" / "results.csv").open()))
    assert rows[0] == ["case", "dice", "hd95_mm", "volume_pred_ml", "volume_gt_ml"]
    assert [r[0] for r in rows[1:]] == ["a", "b", "c", "mean", "std"]
    assert float(rows[1][1]) == pytest.approx(4 / 7, abs=1e-5)
    assert rows[2][2] == ""  # nan HD95
    assert float(rows[4][1]) == pytest.approx(np.mean(DICE), abs=1e-5)
    assert float(rows[5][1]) == pytest.approx(np.std(DICE), abs=1e-5)


def test_all_empty_hd95_is_null_in_summary(tmp_path: Path) -> None:
    write(tmp_path / "p" / "x.nii.gz", vox())
    write(tmp_path / "g" / "x.nii.gz", vox((1, 1, 1)))
    evaluate_folders(tmp_path / "p", tmp_path / "g", tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["cases"][0]["dice"] == 0.0
    assert data["summary"]["hd95_mm"]["mean"] is None and data["summary"]["hd95_mm"]["n"] == 0


def test_existing_output_without_overwrite(folders, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    out.write_text("old")
    with pytest.raises(OutputExistsError):
        evaluate_folders(*folders, out)
    assert out.read_text() == "old"
    (tmp_path / "r2.csv").write_text("old csv")
    with pytest.raises(OutputExistsError):
        evaluate_folders(*folders, tmp_path / "r2.json")
    assert not (tmp_path / "r2.json").exists()
    evaluate_folders(*folders, out, overwrite=True)
    assert json.loads(out.read_text())["cases"][0]["case"] == "a"


def test_gt_task_folder(folders, tmp_path: Path) -> None:
    pred, gt = folders
    task = tmp_path / "task"
    gt.rename(tmp_path / "labelsTr")
    task.mkdir()
    (tmp_path / "labelsTr").rename(task / "labelsTr")
    assert [c for c, _, _ in match_folders(pred, task)] == ["a", "b", "c"]


def test_missing_prediction(folders) -> None:
    pred, gt = folders
    (pred / "b.nii.gz").unlink()
    with pytest.raises(DataError, match="label\\(s\\) without a prediction.*e.g. b"):
        evaluate_folders(pred, gt)


def test_missing_label(folders) -> None:
    pred, gt = folders
    (gt / "c.nii.gz").unlink()
    with pytest.raises(DataError, match="prediction\\(s\\) without a label.*e.g. c"):
        evaluate_folders(pred, gt)


def test_missing_folder_and_empty_pred(tmp_path: Path) -> None:
    (tmp_path / "gt").mkdir()
    with pytest.raises(DataError, match="does not exist"):
        evaluate_folders(tmp_path / "nope", tmp_path / "gt")
    (tmp_path / "pred").mkdir()
    with pytest.raises(DataError, match="no predicted masks"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt")


def test_shape_mismatch(folders) -> None:
    pred, gt = folders
    write(pred / "a.nii.gz", np.zeros((6, 6, 3)))
    with pytest.raises(DataError, match="case a: prediction shape"):
        evaluate_folders(pred, gt)


def test_affine_mismatch(folders) -> None:
    pred, gt = folders
    write(pred / "a.nii.gz", vox(), np.eye(4))
    with pytest.raises(DataError, match="different affines"):
        evaluate_folders(pred, gt)


# -- evaluate_run on a tiny trained run --------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny3_config) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evalrun")
    data = make_synthetic_dataset(root / "data", n_cases=6, shape=(20, 20, 6))
    train(data, root / "run", tiny3_config, epochs=1, progress=False, log=lambda s: None)
    return root / "run", data


def test_evaluate_run(run) -> None:
    run_dir, data = run
    split = json.loads((run_dir / "split.json").read_text())
    calls: list[str] = []
    results, path = evaluate_run(run_dir, "test", overwrite=True, progress=lambda d, t, c: calls.append(c))
    assert path == run_dir / "eval_test.json"
    assert sorted(p.name for p in (run_dir / "predictions_test").iterdir()) == [f"{c}.nii.gz" for c in split["test"]]
    assert calls == split["test"]
    saved = json.loads(path.read_text())
    assert [r["case"] for r in saved["cases"]] == split["test"]
    assert saved["split"] == "test" and saved["ensemble"] == 1 and saved["run"] == str(run_dir)
    assert (run_dir / "eval_test.csv").is_file()
    for r in results["cases"]:
        assert 0.0 <= r["dice"] <= 1.0
        assert r["volume_gt_ml"] > 0
    pred = nib.load(str(run_dir / "predictions_test" / f"{split['test'][0]}.nii.gz"))
    ref = nib.load(str(data / "imagesTr" / f"{split['test'][0]}.nii.gz"))
    assert pred.shape == ref.shape
    np.testing.assert_array_equal(pred.affine, ref.affine)


def test_evaluate_run_val_split_and_overwrite(run) -> None:
    run_dir, data = run
    split = json.loads((run_dir / "split.json").read_text())
    results, path = evaluate_run(run_dir, "val", data_dir=data, overwrite=True)
    assert [r["case"] for r in results["cases"]] == split["val"]
    with pytest.raises(OutputExistsError):
        evaluate_run(run_dir, "val")


def test_evaluate_run_errors(run, tmp_path: Path) -> None:
    run_dir, data = run
    with pytest.raises(DataError, match="not a run folder"):
        evaluate_run(tmp_path)
    with pytest.raises(DataError, match="split 'holdout' not in"):
        evaluate_run(run_dir, "holdout")
    partial = tmp_path / "partial"
    (partial / "imagesTr").mkdir(parents=True)
    (partial / "labelsTr").mkdir()
    for sub in ("imagesTr", "labelsTr"):
        for p in (data / sub).iterdir():
            (partial / sub / p.name).write_bytes(p.read_bytes())
    test_id = json.loads((run_dir / "split.json").read_text())["test"][0]
    for sub in ("imagesTr", "labelsTr"):
        (partial / sub / f"{test_id}.nii.gz").unlink()
    with pytest.raises(DataError, match="1 test case\\(s\\) of the run are missing"):
        evaluate_run(run_dir, "test", data_dir=partial, overwrite=True)
