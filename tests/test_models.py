"""Segment a real scan without training: ``mednca models`` and ``mednca predict --model NAME``
with the hippocampus model shipped in the package, on a held-out case of the shared data; and the
models inside a built wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mednca.cli import main
from mednca.nn.shipped import model_card

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TASK = SHARED / "Task04_Hippocampus"
SPLIT = SHARED / "splits" / "Task04_Hippocampus_70_30.json"
needs_data = pytest.mark.skipif(not TASK.is_dir(), reason="needs ../shared/data/Task04_Hippocampus")


def test_models_lists_hippocampus(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hippocampus") and "test Dice" in out and "CC-BY-SA" in out


def test_models_name_prints_the_card(capsys):
    assert main(["models", "hippocampus"]) == 0
    out = capsys.readouterr().out
    for fragment in ("Intended use", "Not a medical device", "Input:", "Training data", "Review flag", "Licence"):
        assert fragment in out
    assert main(["models", "hippocampus", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "hippocampus"


def test_models_unknown_name(capsys):
    assert main(["models", "liver"]) == 1
    assert "no shipped model named 'liver'" in capsys.readouterr().err


def _test_case() -> str:
    return json.loads(SPLIT.read_text())["test"][0]


@needs_data
def test_predict_with_the_shipped_model(tmp_path, capsys):
    case = _test_case()
    out = tmp_path / "mask.nii.gz"
    assert main(["predict", "--model", "hippocampus", str(TASK / "imagesTr" / f"{case}.nii.gz"), "-o", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{case}.nii.gz: ") and " mL, quality " in line
    report = json.loads((tmp_path / "mask.json").read_text())
    assert report["ensemble"] == model_card("hippocampus")["review"]["ensemble"]
    assert isinstance(report["review"], bool) and report["volume_ml"] > 0 and report["quality"] > 0
    assert ("please review" in line) == report["review"]
    mask = np.asanyarray(nib.load(str(out)).dataobj) > 0
    label = np.asanyarray(nib.load(str(TASK / "labelsTr" / f"{case}.nii.gz")).dataobj) > 0
    assert 2 * (mask & label).sum() / (mask.sum() + label.sum()) > 0.75


@needs_data
def test_predict_model_and_checkpoint_together_is_an_error(tmp_path, capsys):
    rc = main(["predict", "some.safetensors", "scan.nii.gz", "--model", "hippocampus", "-o", str(tmp_path / "m.nii.gz")])
    assert rc == 1 and "not both" in capsys.readouterr().err


def test_predict_without_input_is_an_error(tmp_path, capsys):
    assert main(["predict", "model.safetensors", "-o", str(tmp_path / "m.nii.gz")]) == 1
    assert "--model NAME INPUT" in capsys.readouterr().err


@pytest.mark.slow
def test_the_wheel_holds_the_models_and_they_load_when_installed(tmp_path):
    """Build the wheel, install it (no dependencies) into a fresh folder and load the model from
    there, not from the source tree."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("mednca-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mednca/models/hippocampus.safetensors" in names and "mednca/models/hippocampus.json" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = ("import mednca, sys; m = mednca.load_model('hippocampus'); "
            "print(mednca.__file__); print(m.num_parameters())")
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    where, params = done.stdout.split()
    assert Path(where).is_relative_to(site)
    assert int(params) == model_card("hippocampus")["parameters"]


def test_output_into_a_closed_pipe_is_not_a_traceback():
    done = subprocess.run("mednca models hippocampus | head -1", shell=True, capture_output=True, text=True,
                          executable="/bin/bash")
    assert done.stdout.startswith("hippocampus:") and "Traceback" not in done.stderr
