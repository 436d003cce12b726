"""Robustness: deterministic graded perturbations, geometry that moves image and label alike, and
the experiment's CSV / JSON / plot on a tiny trained run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mednca.cli import main
from mednca.data.synthetic import make_case, make_synthetic_dataset
from mednca.errors import DataError
from mednca.experiments.perturbations import (PERTURBATIONS, Context, case_rng, perturb, shift, translation_params,
                                              zoom)
from mednca.experiments.robustness import run_robustness
from mednca.pipeline.train import train

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    return make_case(np.random.default_rng(0), (20, 20, 6))


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_perturbation_is_deterministic_and_grows(volume, name: str) -> None:
    image, label = volume
    ctx = Context(AFFINE, 2)
    p = PERTURBATIONS[name]
    state = torch.get_rng_state()
    diffs = []
    for sev in range(4):
        a, la = perturb(image, label, ctx, name, sev, 3, seed=1, case_id="c")
        b, lb = perturb(image, label, ctx, name, sev, 3, seed=1, case_id="c")
        assert np.array_equal(a, b) and np.array_equal(la, lb)  # same seed and severity: same volume
        assert a.shape == image.shape and a.dtype == np.float32 and la.shape == label.shape
        if p.kind == "mri":
            assert np.array_equal(la, label)  # an intensity artefact leaves the label alone
        diffs.append(float(np.abs(a - image).mean()))
    assert diffs[0] == 0.0
    assert all(x < y for x, y in zip(diffs, diffs[1:])), diffs  # severity grows monotonically
    assert torch.equal(torch.get_rng_state(), state)  # torch's global random state is untouched
    mags = [p.magnitude(s, 3) for s in range(4)]
    assert mags[-1] == pytest.approx(p.max_magnitude)
    assert all(abs(x - mags[0]) < abs(y - mags[0]) for x, y in zip(mags[1:], mags[2:]))
    params = p.sample(case_rng(1, "c", name), ctx)
    if params:  # random parts: a seed that draws other parameters gives another volume
        seed = next(s for s in range(2, 50) if repr(p.sample(case_rng(s, "c", name), ctx)) != repr(params))
        other, _ = perturb(image, label, ctx, name, 3, 3, seed=seed, case_id="c")
        assert not np.array_equal(other, perturb(image, label, ctx, name, 3, 3, seed=1, case_id="c")[0])


def test_noise_std_follows_severity(volume) -> None:
    image, label = volume
    span = np.subtract(*np.percentile(image, [99.5, 0.5]))
    for sev in (1, 2, 3):
        noisy, _ = perturb(image, label, Context(AFFINE), "noise", sev, 3, seed=0, case_id="c")
        assert np.std(noisy - image) == pytest.approx(0.2 * sev / 3 * span, rel=0.1)


def test_shift_pads_and_does_not_wrap() -> None:
    a = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    s = shift(a, (1, -2), fill=-1)
    assert np.array_equal(s, [[-1, -1, -1, -1], [3, 4, -1, -1], [7, 8, -1, -1]])
    assert np.array_equal(shift(a, (0, 4), fill=0), np.zeros_like(a))  # a whole field of view: nothing left


def test_translation_moves_image_and_label_alike(volume) -> None:
    image, label = volume
    image = (image + 2.0 * label).astype(np.float32)  # the label is exactly the image above a threshold
    thr = float(image[label == 0].max())
    ctx = Context(AFFINE, 2)
    d = translation_params(case_rng(0, "c", "translation"), ctx)["direction"]
    for sev in (1, 2, 3):
        img, lab = perturb(image, label, ctx, "translation", sev, 3, seed=0, case_id="c")
        shifts = [int(round(0.5 * sev / 3 * d[i] * image.shape[i])) for i in range(2)] + [0]
        assert np.array_equal(img, shift(image, shifts, image.min()))
        assert np.array_equal(lab, shift(label, shifts, 0))
        assert np.array_equal(lab, (img > thr).astype(lab.dtype))  # label of the shifted image
        assert (img == image.min()).sum() > (image == image.min()).sum()  # padded with the minimum
    assert max(abs(s) for s in shifts) == 10  # the top severity moves 50 % of the 20-voxel FOV


def test_geometry_is_in_plane_only() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((9, 11, 13)).astype(np.float32) + 0.1
    image[0, 0, :] = image[:, 0, 0] = image[0, :, 0] = 0  # every slice has the volume's minimum
    label = (image > 0.7).astype(np.uint8)
    for axis in (0, 1, 2):
        ctx = Context(np.eye(4), axis)
        for name in ("translation", "zoom_in", "zoom_out"):
            img, lab = perturb(image, label, ctx, name, 3, 3, seed=0, case_id="c")
            # each slice along the model's axis is transformed on its own: a slice's result
            # does not depend on the other slices
            single, _ = perturb(np.take(image, [4], axis), np.take(label, [4], axis), ctx, name, 3, 3,
                                seed=0, case_id="c")
            assert np.allclose(np.take(img, [4], axis), single)


def test_zoom_about_the_centre() -> None:
    rng = np.random.default_rng(1)
    label = (rng.random((21, 21, 3)) > 0.6).astype(np.uint8)
    image = label.astype(np.float32) + 0.5
    ks = np.arange(-5, 6)
    big_img, big_lab = zoom(image, 2.0, 2, 1, 0.5), zoom(label, 2.0, 2, 0, 0)
    # output voxel c + 2k shows input voxel c + k (c = 10), for image and label alike
    assert np.array_equal(big_img[10 + 2 * ks][:, 10 + 2 * ks], image[10 + ks][:, 10 + ks])
    assert np.array_equal(big_lab[10 + 2 * ks][:, 10 + 2 * ks], label[10 + ks][:, 10 + ks])
    small_img, small_lab = perturb(image, label, Context(np.eye(4), 2), "zoom_out", 3, 3)
    assert np.array_equal(small_lab, (small_img > 1.0).astype(np.uint8))  # label of the zoomed image
    assert small_lab[:5].sum() == 0 and np.all(small_img[:5] == 0.5)  # padded with the minimum
    assert small_img.shape == image.shape


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny3_config) -> tuple[Path, Path, Path]:
    """(task folder, run, an identical copy of the run)."""
    root = tmp_path_factory.mktemp("robust")
    data = make_synthetic_dataset(root / "data", n_cases=6, shape=(20, 20, 6))
    cfg = tiny3_config.replace(interpolation="linear")
    split = root / "split.json"
    ids = [f"synth_{i:03d}" for i in range(6)]
    split.write_text(json.dumps({"train": ids[:3], "val": ids[3:4], "test": ids[4:]}))
    train(data, root / "run", cfg, split_file=split, progress=False, log=lambda s: None)
    shutil.copytree(root / "run", root / "run2")
    return data, root / "run", root / "run2"


def test_run_robustness_outputs(runs, tmp_path: Path) -> None:
    data, run, run2 = runs
    out = tmp_path / "rob"
    rows = run_robustness([run, run2], data, "test", out_dir=out, severities=2, cases=2, ensemble=2, seed=3)
    n_pert = len(PERTURBATIONS)
    assert len(rows) == 2 * 2 * (n_pert * 2 + 1)  # models x cases x (perturbations x severities + clean)
    with (out / "robustness.csv").open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["model", "run", "perturbation", "severity", "magnitude", "case", "dice", "quality"]
    assert len(table) == len(rows)
    assert {r["model"] for r in table} == {"mednca (run)", "mednca (run2)"}
    assert {(r["perturbation"], r["severity"]) for r in table} == \
        {("none", "0")} | {(p, str(s)) for p in PERTURBATIONS for s in (1, 2)}
    assert {r["case"] for r in table} == {"synth_004", "synth_005"}
    # the two runs hold the same weights: identical inputs and seeds give identical results
    by = {}
    for r in rows:
        by.setdefault((r["perturbation"], r["severity"], r["case"]), []).append((r["dice"], r["quality"]))
    assert all(len(v) == 2 and v[0] == v[1] for v in by.values())
    assert all(np.isfinite(r["quality"]) and 0 <= r["dice"] <= 1 for r in rows)
    summary = json.loads((out / "robustness.json").read_text())
    assert summary["figures"]["panels"] == n_pert  # one panel per perturbation
    assert summary["cases"] == ["synth_004", "synth_005"] and summary["severities"] == 2
    s = summary["summary"]["mednca (run)"]
    assert set(s) == set(PERTURBATIONS) and set(s["noise"]) == {"0", "1", "2"}
    assert s["noise"]["2"]["quality_mean"] is not None and s["noise"]["2"]["n"] == 2
    assert summary["perturbations"]["zoom_out"]["magnitudes"] == pytest.approx([1.0, 2 ** -0.5, 0.5])
    from PIL import Image

    for name in ("robustness.png", "robustness_quality.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] <= 1200
    with pytest.raises(Exception, match="already exists"):
        run_robustness([run], data, out_dir=out, severities=1, cases=1, perturbations=["noise"])


def test_runs_must_share_the_split(runs, tmp_path: Path) -> None:
    data, run, run2 = runs
    other = tmp_path / "other"
    shutil.copytree(run, other)
    split = json.loads((other / "split.json").read_text())
    split["test"] = split["test"][:1]
    (other / "split.json").write_text(json.dumps(split))
    with pytest.raises(DataError, match="different test splits"):
        run_robustness([run, other], data)
    with pytest.raises(DataError, match="unknown perturbation"):
        run_robustness([run], data, perturbations=["blur"])


def test_cli_robustness(runs, tmp_path: Path, capsys) -> None:
    data, run, _ = runs
    out = tmp_path / "cli"
    assert main(["robustness", str(run), "--data", str(data), "--severities", "1", "--cases", "1",
                 "--perturbation", "noise", "--perturbation", "zoom_in", "--ensemble", "2", "-o", str(out)]) == 0
    assert "3 rows written" in capsys.readouterr().out
    with (out / "robustness.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1 * 1 * (2 * 1 + 1)
    assert json.loads((out / "robustness.json").read_text())["figures"]["panels"] == 2
    rc = main(["robustness", str(run), "--data", str(data), "-o", str(out), "--cases", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("mednca: error: ") and "already exists" in err
