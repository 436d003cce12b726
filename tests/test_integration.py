"""End to end on real MRI from ../shared/data: a few cases, a few iterations, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mednca.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPO = SHARED / "Task04_Hippocampus"
PROSTATE = SHARED / "PROMISE12"

pytestmark = pytest.mark.skipif(not HIPPO.is_dir(), reason="../shared/data is not beside the repo")

TINY = ["--set", "steps=4", "--set", "hidden=32", "--set", "channels=8", "--set", "batches_per_epoch=3",
        "--set", "batch_size=8", "--epochs", "2", "--no-progress"]


def _split(tmp_path: Path, train: list[str], val: list[str], test: list[str]) -> Path:
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": train, "val": val, "test": test}))
    return path


def test_hippocampus_train_predict_evaluate(tmp_path, capsys):
    ids = json.loads((SHARED / "splits" / "Task04_Hippocampus_70_30.json").read_text())
    split = _split(tmp_path, ids["train"][:4], ids["train"][4:5], ids["test"][:2])
    run = tmp_path / "run"
    assert main(["train", "--data", str(HIPPO), "--preset", "hippocampus", "--out", str(run),
                 "--split", str(split), *TINY]) == 0
    assert json.loads((run / "split.json").read_text())["test"] == ids["test"][:2]
    assert len((run / "log.csv").read_text().splitlines()) == 3  # header + 2 epochs

    case = ids["test"][0]
    image = HIPPO / "imagesTr" / f"{case}.nii.gz"
    out = tmp_path / "pred" / f"{case}.nii.gz"
    assert main(["predict", str(run), str(image), "-o", str(out), "--ensemble", "2"]) == 0
    src, pred = nib.load(str(image)), nib.load(str(out))
    assert pred.shape == src.shape
    np.testing.assert_allclose(pred.affine, src.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    std = np.asarray(nib.load(str(out.with_name(f"{case}_std.nii.gz"))).dataobj)
    assert std.shape == src.shape and (std >= 0).all()

    assert main(["evaluate", str(run), "--split", "test"]) == 0
    results = json.loads((run / "eval_test.json").read_text())
    assert [r["case"] for r in results["cases"]] == ids["test"][:2]
    assert all(0.0 <= r["dice"] <= 1.0 for r in results["cases"])
    assert (run / "eval_test.csv").read_text().splitlines()[0].startswith("case,dice")


@pytest.mark.skipif(not PROSTATE.is_dir(), reason="PROMISE12 not in ../shared/data")
def test_prostate_preset_loads_and_trains(tmp_path):
    ids = json.loads((SHARED / "splits" / "PROMISE12_70_30.json").read_text())
    split = _split(tmp_path, ids["train"][:2], ids["train"][2:3], ids["test"][:1])
    tiny = [a.replace("batch_size=8", "batch_size=2") for a in TINY]
    assert main(["train", "--data", str(PROSTATE), "--preset", "prostate", "--out", str(tmp_path / "run"),
                 "--split", str(split), "--set", "image_size=64", "--set", "patch_size=16", *tiny]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["name"] == "prostate" and config["image_size"] == 64
