"""The procedural synthetic dataset: deterministic, labelled, MSD layout."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from mednca.data.cases import find_cases
from mednca.data.synthetic import make_case, make_synthetic_dataset

SHAPE = (20, 20, 6)


def arrays(root: Path) -> dict[str, bytes]:
    out = {}
    for sub in ("imagesTr", "labelsTr"):
        for path in sorted((root / sub).iterdir()):
            out[f"{sub}/{path.name}"] = np.asanyarray(nib.load(str(path)).dataobj).tobytes()
    return out


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = arrays(make_synthetic_dataset(tmp_path / "a", n_cases=3, shape=SHAPE, seed=4))
    b = arrays(make_synthetic_dataset(tmp_path / "b", n_cases=3, shape=SHAPE, seed=4))
    c = arrays(make_synthetic_dataset(tmp_path / "c", n_cases=3, shape=SHAPE, seed=5))
    assert len(a) == 6
    assert a == b
    assert a["imagesTr/synth_000.nii.gz"] != c["imagesTr/synth_000.nii.gz"]
    assert a["imagesTr/synth_000.nii.gz"] != a["imagesTr/synth_001.nii.gz"]


def test_layout_and_labels(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "task", n_cases=4, shape=SHAPE)
    assert root == tmp_path / "task"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and len(meta["training"]) == 4
    assert meta["training"][0] == {"image": "./imagesTr/synth_000.nii.gz", "label": "./labelsTr/synth_000.nii.gz"}
    cases = find_cases(root)
    assert [c.case_id for c in cases] == [f"synth_{i:03d}" for i in range(4)]
    for case in cases:
        image, label = nib.load(str(case.image)), nib.load(str(case.label))
        assert image.shape == label.shape == SHAPE
        np.testing.assert_array_equal(image.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
        lab = np.asanyarray(label.dataobj)
        assert set(np.unique(lab).tolist()) == {0, 1}
        assert lab.sum() > 0
        img = np.asarray(image.dataobj)
        assert np.isfinite(img).all() and img.dtype == np.float32


def test_structure_is_brighter_than_background() -> None:
    image, label = make_case(np.random.default_rng(0), SHAPE)
    assert image.shape == label.shape == SHAPE
    assert image[label == 1].mean() > image[label == 0].mean() + 0.2
