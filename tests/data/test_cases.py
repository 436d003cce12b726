"""find_cases: MSD and nnU-Net layouts, junk files, missing pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mednca.data.cases import Case, find_cases
from mednca.errors import DataError

VOL = np.zeros((4, 4, 2), np.float32)
LAB = np.zeros((4, 4, 2), np.uint8)


def make_msd(root: Path, write_nifti, ids=("b", "a", "c")) -> Path:
    for cid in ids:
        write_nifti(root / "imagesTr" / f"{cid}.nii.gz", VOL)
        write_nifti(root / "labelsTr" / f"{cid}.nii.gz", LAB)
    return root


def test_msd_layout_sorted(tmp_path: Path, write_nifti) -> None:
    root = make_msd(tmp_path / "task", write_nifti)
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["a", "b", "c"]
    assert cases[0] == Case("a", root / "imagesTr" / "a.nii.gz", 0, root / "labelsTr" / "a.nii.gz")


def test_msd_channel_is_passed_on(tmp_path: Path, write_nifti) -> None:
    root = make_msd(tmp_path / "task", write_nifti, ids=("a",))
    assert find_cases(root, channel=2)[0].channel == 2


def test_junk_files_ignored(tmp_path: Path, write_nifti) -> None:
    root = make_msd(tmp_path / "task", write_nifti, ids=("a", "b"))
    for sub in ("imagesTr", "labelsTr"):
        (root / sub / "._a.nii.gz").write_bytes(b"\x00\x05\x16\x07 apple double")
        (root / sub / ".DS_Store").write_bytes(b"junk")
        (root / sub / "notes.txt").write_text("not an image")
    write_nifti(root / "imagesTr" / ".hidden.nii.gz", VOL)  # hidden, and has no label
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert cases[0].image.name == "a.nii.gz"


@pytest.mark.parametrize("channel", [0, 1])
def test_nnunet_layout_picks_channel_file(tmp_path: Path, write_nifti, channel: int) -> None:
    root = tmp_path / "Dataset001_X"
    for cid in ("p2", "p1"):
        for ch in (0, 1):
            write_nifti(root / "imagesTr" / f"{cid}_{ch:04d}.nii.gz", VOL)
        write_nifti(root / "labelsTr" / f"{cid}.nii.gz", LAB)
    cases = find_cases(root, channel)
    assert [c.case_id for c in cases] == ["p1", "p2"]
    assert [c.image.name for c in cases] == [f"p1_{channel:04d}.nii.gz", f"p2_{channel:04d}.nii.gz"]
    assert all(c.channel is None for c in cases)
    assert [c.label.name for c in cases] == ["p1.nii.gz", "p2.nii.gz"]


def test_nnunet_missing_channel(tmp_path: Path, write_nifti) -> None:
    root = tmp_path / "task"
    write_nifti(root / "imagesTr" / "p1_0000.nii.gz", VOL)
    write_nifti(root / "labelsTr" / "p1.nii.gz", LAB)
    with pytest.raises(DataError, match="p1 has no channel 0001"):
        find_cases(root, channel=1)


def test_image_without_label_is_named(tmp_path: Path, write_nifti) -> None:
    root = make_msd(tmp_path / "task", write_nifti, ids=("a",))
    write_nifti(root / "imagesTr" / "lonely.nii.gz", VOL)
    with pytest.raises(DataError, match="without a label.*lonely"):
        find_cases(root)


def test_missing_images_folder(tmp_path: Path) -> None:
    (tmp_path / "task" / "labelsTr").mkdir(parents=True)
    with pytest.raises(DataError, match="no imagesTr/"):
        find_cases(tmp_path / "task")


def test_missing_labels_folder(tmp_path: Path, write_nifti) -> None:
    write_nifti(tmp_path / "task" / "imagesTr" / "a.nii.gz", VOL)
    with pytest.raises(DataError, match="no labelsTr/"):
        find_cases(tmp_path / "task")


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        find_cases(tmp_path / "nowhere")


def test_empty_images_folder(tmp_path: Path) -> None:
    (tmp_path / "task" / "imagesTr").mkdir(parents=True)
    (tmp_path / "task" / "labelsTr").mkdir()
    (tmp_path / "task" / "imagesTr" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no NIfTI images"):
        find_cases(tmp_path / "task")


def test_plain_folder_without_labels(tmp_path: Path, write_nifti) -> None:
    for cid in ("y", "x"):
        write_nifti(tmp_path / "imgs" / f"{cid}.nii", VOL)
    cases = find_cases(tmp_path / "imgs", labels=None)
    assert [(c.case_id, c.image.name, c.label) for c in cases] == [("x", "x.nii", None), ("y", "y.nii", None)]


def test_msd_ids_ending_in_four_digits(tmp_path: Path, write_nifti) -> None:
    root = make_msd(tmp_path / "task", write_nifti, ids=("scan_0000", "scan_0001", "scan_0002"))
    assert [c.case_id for c in find_cases(root)] == ["scan_0000", "scan_0001", "scan_0002"]
