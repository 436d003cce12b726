"""Inference: predict_volume, predict_file and predict_folder with a tiny untrained model."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mednca.data.synthetic import make_case, make_synthetic_dataset
from mednca.errors import DataError, OutputExistsError
from mednca.nn.model import MedNCA
from mednca.pipeline.predict import predict_file, predict_folder, predict_volume

SHAPE = (20, 18, 6)


def rotated_affine() -> np.ndarray:
    a = np.deg2rad(30.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.5, 0.8, 3.0])
    affine[:3, 3] = [-12.5, 30.25, 7.0]
    return affine


AFFINE = rotated_affine()


@pytest.fixture(scope="module")
def model(random_model) -> MedNCA:
    return random_model()


def image(seed: int = 0) -> np.ndarray:
    return make_case(np.random.default_rng(seed), SHAPE)[0]


def write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def test_predict_volume_shapes_and_ranges(model: MedNCA) -> None:
    vol = image()
    pred = predict_volume(model, vol, ensemble=3, generator=torch.Generator().manual_seed(0))
    assert pred.probability.shape == pred.std.shape == SHAPE
    assert pred.probability.dtype == pred.std.dtype == np.float32
    assert pred.probability.min() >= 0.0 and pred.probability.max() <= 1.0
    assert pred.std.min() >= 0.0 and pred.std.max() <= 0.5
    assert pred.probability.std() > 1e-3  # not a constant map
    assert pred.std.max() > 0.0  # stochastic passes differ
    assert pred.mask.dtype == np.uint8
    assert 0.0 < pred.mask.mean() < 1.0  # both foreground and background
    np.testing.assert_array_equal(pred.mask, pred.probability > 0.5)


def test_predict_volume_single_pass_has_zero_std(model: MedNCA) -> None:
    pred = predict_volume(model, image(), ensemble=1, generator=torch.Generator().manual_seed(0), batch_size=4)
    assert not pred.std.any()
    same = predict_volume(model, image(), ensemble=1, generator=torch.Generator().manual_seed(0))
    assert pred.probability.shape == same.probability.shape == SHAPE


def test_predict_volume_rejects_non_3d(model: MedNCA) -> None:
    with pytest.raises(DataError, match="expected a 3D volume"):
        predict_volume(model, np.zeros((8, 8), np.float32))


def test_predict_file_keeps_geometry(model: MedNCA, tmp_path: Path) -> None:
    src = write(tmp_path / "in.nii.gz", image())
    out = tmp_path / "out" / "mask.nii.gz"
    written = predict_file(model, src, out)
    assert written == [out]
    ref, got = nib.load(str(src)), nib.load(str(out))
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.affine, ref.affine)
    assert got.header.get_zooms() == ref.header.get_zooms()
    np.testing.assert_array_equal(got.header.get_sform(), ref.header.get_sform())
    mask = load(out)
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 1}
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp files left


def test_predict_file_ensemble_writes_prob_and_std(model: MedNCA, tmp_path: Path) -> None:
    src = write(tmp_path / "in.nii.gz", image())
    out = tmp_path / "case.nii.gz"
    written = predict_file(model, src, out, ensemble=3, seed=1)
    assert written == [out, tmp_path / "case_prob.nii.gz", tmp_path / "case_std.nii.gz"]
    mask, prob, std = (load(p) for p in written)
    assert prob.dtype == std.dtype == np.float32
    assert prob.shape == std.shape == SHAPE
    assert 0.0 <= prob.min() and prob.max() <= 1.0 and std.min() >= 0.0 and std.max() > 0.0
    np.testing.assert_array_equal(mask, prob > 0.5)
    expected = predict_volume(model, image(), 3, torch.Generator().manual_seed(1))
    np.testing.assert_allclose(prob, expected.probability, atol=1e-6)
    for p in written[1:]:
        np.testing.assert_array_equal(nib.load(str(p)).affine, nib.load(str(src)).affine)


def test_predict_file_uncompressed_sidecars(model: MedNCA, tmp_path: Path) -> None:
    src = write(tmp_path / "in.nii", image())
    written = predict_file(model, src, tmp_path / "o.nii", ensemble=2)
    assert [p.name for p in written] == ["o.nii", "o_prob.nii", "o_std.nii"]
    assert all(nib.load(str(p)).shape == SHAPE for p in written)


def test_predict_file_bad_output_name(model: MedNCA, tmp_path: Path) -> None:
    src = write(tmp_path / "in.nii.gz", image())
    with pytest.raises(DataError, match="must end in .nii.gz or .nii"):
        predict_file(model, src, tmp_path / "mask.png")


def test_predict_file_overwrite(model: MedNCA, tmp_path: Path) -> None:
    src = write(tmp_path / "in.nii.gz", image())
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="already exists"):
        predict_file(model, src, out)
    assert out.read_bytes() == b"old"
    predict_file(model, src, out, overwrite=True)
    assert load(out).shape == SHAPE


def test_predict_file_refuses_existing_sidecar(model: MedNCA, tmp_path: Path) -> None:
    src = write(tmp_path / "in.nii.gz", image())
    (tmp_path / "m_std.nii.gz").write_bytes(b"old")
    with pytest.raises(OutputExistsError):
        predict_file(model, src, tmp_path / "m.nii.gz", ensemble=2)
    assert not (tmp_path / "m.nii.gz").exists()


def test_predict_file_4d_channel(model: MedNCA, tmp_path: Path) -> None:
    a, b = image(0), image(1)
    src4 = write(tmp_path / "multi.nii.gz", np.stack([a, b], -1))
    src3 = write(tmp_path / "single.nii.gz", b)
    predict_file(model, src4, tmp_path / "from4d.nii.gz", channel=1, ensemble=2)
    predict_file(model, src3, tmp_path / "from3d.nii.gz", ensemble=2)
    got = nib.load(str(tmp_path / "from4d.nii.gz"))
    assert got.shape == SHAPE
    assert got.header.get_zooms() == nib.load(str(src4)).header.get_zooms()[:3]
    np.testing.assert_array_equal(got.affine, nib.load(str(src4)).affine)
    np.testing.assert_array_equal(load(tmp_path / "from4d_prob.nii.gz"), load(tmp_path / "from3d_prob.nii.gz"))
    with pytest.raises(DataError, match="channel 2 does not exist"):
        predict_file(model, src4, tmp_path / "x.nii.gz", channel=2)


def test_same_seed_same_output(model: MedNCA, tmp_path: Path) -> None:
    src = write(tmp_path / "in.nii.gz", image())
    first = [load(p) for p in predict_file(model, src, tmp_path / "a.nii.gz", ensemble=2, seed=7)]
    second = [load(p) for p in predict_file(model, src, tmp_path / "b.nii.gz", ensemble=2, seed=7)]
    other = [load(p) for p in predict_file(model, src, tmp_path / "c.nii.gz", ensemble=2, seed=8)]
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[1], other[1])


def test_predict_folder_plain(model: MedNCA, tmp_path: Path) -> None:
    for i, name in enumerate(["b", "a"]):
        write(tmp_path / "in" / f"{name}.nii.gz", image(i))
    (tmp_path / "in" / "._a.nii.gz").write_bytes(b"junk")
    calls: list[tuple[int, int, str]] = []
    written = predict_folder(model, tmp_path / "in", tmp_path / "out",
                             progress=lambda d, t, c: calls.append((d, t, c)))
    assert written == [tmp_path / "out" / "a.nii.gz", tmp_path / "out" / "b.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert calls == [(1, 2, "a"), (2, 2, "b")]
    got = nib.load(str(tmp_path / "out" / "a.nii.gz"))
    np.testing.assert_array_equal(got.affine, nib.load(str(tmp_path / "in" / "a.nii.gz")).affine)
    expected = predict_volume(model, image(1), 1, torch.Generator().manual_seed(0)).mask
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), expected)


def test_predict_folder_task_with_ensemble(model: MedNCA, tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "task", n_cases=2, shape=SHAPE)
    out = tmp_path / "out"
    written = predict_folder(model, root, out, ensemble=2)
    names = ["synth_000.nii.gz", "synth_001.nii.gz"]
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(
        names + [f"prob/{n}" for n in names] + [f"std/{n}" for n in names])
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == names
    for n in names:
        shape = nib.load(str(root / "imagesTr" / n)).shape
        assert load(out / n).shape == load(out / "prob" / n).shape == load(out / "std" / n).shape == shape
    with pytest.raises(OutputExistsError):
        predict_folder(model, root, out, ensemble=2)
    predict_folder(model, root, out, ensemble=2, overwrite=True)


def test_predict_folder_nnunet_channel(model: MedNCA, tmp_path: Path) -> None:
    for ch in (0, 1):
        write(tmp_path / "in" / f"p1_{ch:04d}.nii.gz", image(ch))
    predict_folder(model, tmp_path / "in", tmp_path / "out", channel=1, channel_files="group")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p1.nii.gz"]
    expected = predict_volume(model, image(1), 1, torch.Generator().manual_seed(0)).mask
    np.testing.assert_array_equal(load(tmp_path / "out" / "p1.nii.gz"), expected)


def test_scans_named_like_channel_files_are_never_dropped(model: MedNCA, tmp_path: Path) -> None:
    """The audit's case: scan_0000 .. scan_0002 are three scans, not three channels of one."""
    for i in range(3):
        write(tmp_path / "in" / f"scan_{i:04d}.nii.gz", image(i))
    said: list[str] = []
    written = predict_folder(model, tmp_path / "in", tmp_path / "out", log=said.append)
    assert sorted(p.name for p in written) == ["scan_0000.nii.gz", "scan_0001.nii.gz", "scan_0002.nii.gz"]
    assert len(said) == 1 and "each read as a scan of its own" in said[0] and "--channel-files group" in said[0]


def test_a_dataset_json_declaring_channels_groups_them(model: MedNCA, tmp_path: Path) -> None:
    task = tmp_path / "Dataset001"
    for ch in (0, 1):
        write(task / "imagesTs" / f"p1_{ch:04d}.nii.gz", image(ch))
    (task / "dataset.json").write_text('{"channel_names": {"0": "T2", "1": "ADC"}, "file_ending": ".nii.gz"}')
    said: list[str] = []
    written = predict_folder(model, task / "imagesTs", tmp_path / "out", log=said.append)
    assert [p.name for p in written] == ["p1.nii.gz"] and "channels of 1 case(s)" in said[0]
    written = predict_folder(model, task / "imagesTs", tmp_path / "sep", channel_files="separate")
    assert sorted(p.name for p in written) == ["p1_0000.nii.gz", "p1_0001.nii.gz"]


def test_a_bad_scan_in_a_folder_is_reported_and_the_others_are_written(model: MedNCA, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for i in range(3):
        write(folder / f"case{i}.nii.gz", image(i))
    (folder / "case1.nii.gz").write_bytes(b"not a NIfTI file")
    said: list[str] = []
    with pytest.raises(DataError, match=r"1 of 3 case\(s\) could not be predicted \(case1\); the other 2 were written"):
        predict_folder(model, folder, tmp_path / "out", log=said.append)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.nii.gz", "case2.nii.gz"]
    assert len(said) == 1 and said[0].startswith("case case1 failed: cannot read")


def test_an_input_scan_is_never_overwritten(model: MedNCA, tmp_path: Path) -> None:
    scan = write(tmp_path / "scan.nii.gz", image(0))
    before = scan.read_bytes()
    with pytest.raises(OutputExistsError, match="is the input scan"):
        predict_file(model, scan, scan, overwrite=True)
    with pytest.raises(OutputExistsError, match="is an input scan"):
        predict_folder(model, tmp_path, tmp_path, overwrite=True)
    assert scan.read_bytes() == before


def test_predict_checks_the_output_can_be_written_before_predicting(model: MedNCA, tmp_path: Path,
                                                                     monkeypatch) -> None:
    from mednca.errors import OutputError
    import mednca.pipeline.predict as predict_mod

    scan = write(tmp_path / "scan.nii.gz", image(0))
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(predict_mod, "predict_case", lambda *a, **k: pytest.fail("predicted before the check"))
    with pytest.raises(OutputError, match="is a file, not a folder"):
        predict_file(model, scan, tmp_path / "afile" / "mask.nii.gz")
    (tmp_path / "adir.nii.gz").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        predict_file(model, scan, tmp_path / "adir.nii.gz", overwrite=True)


def test_ensemble_is_bounded(model: MedNCA) -> None:
    from mednca.errors import ConfigError

    with pytest.raises(ConfigError, match="ensemble must be an integer from 1 to 64"):
        predict_volume(model, image(0), 65)


def test_predict_folder_shards_split_the_cases(model: MedNCA, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for i in range(5):
        write(folder / f"case{i}.nii.gz", image(i))
    names = []
    for rank in range(2):
        written = predict_folder(model, folder, tmp_path / "out", shard=(rank, 2))
        names.append(sorted(p.name for p in written))
    assert names == [["case0.nii.gz", "case2.nii.gz", "case4.nii.gz"], ["case1.nii.gz", "case3.nii.gz"]]


def test_predict_folder_checks_all_outputs_first(model: MedNCA, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for i in range(3):
        write(folder / f"case{i}.nii.gz", image(i))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "case2.nii.gz").write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        predict_folder(model, folder, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case2.nii.gz"]


def test_largest_component_keeps_the_biggest_blob():
    import numpy as np

    from mednca.pipeline.predict import Prediction, largest_component

    prob = np.zeros((12, 12, 6), np.float32)
    prob[1:6, 1:6, 1:4] = 0.9  # 75 voxels
    prob[8:10, 8:10, 2:4] = 0.8  # 8 voxels, apart
    prob[6, 6, 4] = 0.7  # touches the big one only diagonally (26-connected)
    raw = Prediction(prob, np.zeros_like(prob))
    kept = Prediction(prob, np.zeros_like(prob), largest_component=True)
    assert raw.mask.sum() == 84
    assert kept.mask.sum() == 76 and kept.mask[6, 6, 4] == 1 and kept.mask[8, 8, 2] == 0
    assert kept.mask.dtype == np.uint8
    empty = np.zeros((4, 4, 4), np.uint8)
    assert largest_component(empty).sum() == 0
