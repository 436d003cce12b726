"""predict on DICOM: the SEG lies on the right voxels (checked from its own per-frame geometry),
NIfTI output is in the DICOM's patient geometry, and a real hippocampus case segmented as DICOM
gives the same mask as the NIfTI it was written from."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from mednca.cli import main  # noqa: E402
from mednca.config import MedNCAConfig  # noqa: E402
from mednca.errors import DataError, OutputExistsError  # noqa: E402
from mednca.pipeline.predict_dicom import predict_dicom  # noqa: E402

AFFINE = np.array([[-0.8, 0, 0, 30.0], [0, -0.9, 0, 40.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])
HIPPOCAMPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "Task04_Hippocampus"


class Threshold:
    """A runtime that segments the bright voxels of each slice (normalised > 0.5): its mask is
    known in advance, so the test can check where the SEG puts it."""

    config = MedNCAConfig(image_size=16, patch_size=8, axis=2, orientation="RAS")

    def infer(self, ensemble: int = 1, seed: int = 0):
        return lambda x: ((x > 0.5).float(), torch.zeros_like(x))


def box_scan() -> tuple[np.ndarray, np.ndarray]:
    """A (16, 16, 8) scan, zero but for an off-centre bright box; and the box as a mask."""
    box = np.zeros((16, 16, 8), dtype=np.uint8)
    box[2:7, 9:14, 1:4] = 1
    box[3, 9, 4] = 1  # one more voxel on another slice: asymmetric along every axis
    return box.astype(np.int16) * 500, box


def flip(volume: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    f = np.eye(4)
    f[axis, axis], f[axis, 3] = -1, volume.shape[axis] - 1
    return np.flip(volume, axis).copy(), affine @ f


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The mean RAS position (mm) of a mask's voxels."""
    ijk = np.argwhere(mask > 0)
    return (affine[:3, :3] @ ijk.mean(0)) + affine[:3, 3]


def seg_frames(path: Path) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """A SEG's frames (n, rows, columns), each frame's ImagePositionPatient (LPS), the shared
    orientation (6,) and pixel spacing (2,), read with highdicom."""
    seg = hd.seg.segread(str(path))
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    spacing = np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
    positions = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
                 for f in seg.PerFrameFunctionalGroupsSequence]
    return np.asarray(seg.pixel_array), positions, orientation, spacing


def seg_centroid(path: Path) -> np.ndarray:
    """The mean RAS position (mm) of a SEG's foreground pixels, from its per-frame geometry."""
    frames, positions, orientation, spacing = seg_frames(path)
    points = []
    for frame, position in zip(frames, positions):
        rows, cols = np.nonzero(frame)
        points.append(position + np.outer(cols * spacing[1], orientation[:3]) + np.outer(rows * spacing[0], orientation[3:]))
    lps = np.concatenate(points).mean(0)
    return lps * [-1, -1, 1]


@pytest.mark.parametrize("variant", ["head-first", "feet-first", "flipped rows"])
def test_the_seg_lies_on_the_segmented_voxels(tmp_path, write_dicom_series, variant):
    scan, truth = box_scan()
    affine = AFFINE
    if variant == "feet-first":
        (scan, affine), truth = flip(scan, AFFINE, 2), flip(truth, AFFINE, 2)[0]
    elif variant == "flipped rows":
        (scan, affine), truth = flip(scan, AFFINE, 1), flip(truth, AFFINE, 1)[0]
    series = write_dicom_series(tmp_path / "series", scan, affine)
    predict_dicom(Threshold(), series, tmp_path / "result.dcm", model_name="threshold", structure="prostate")
    predict_dicom(Threshold(), series, tmp_path / "mask.nii.gz")
    mask = nib.load(str(tmp_path / "mask.nii.gz"))
    expected = world_centroid(truth, affine)
    np.testing.assert_allclose(world_centroid(np.asarray(mask.dataobj), mask.affine), expected, atol=1e-3)
    np.testing.assert_allclose(seg_centroid(tmp_path / "result.dcm"), expected, atol=1e-3)
    assert int(np.asarray(mask.dataobj).sum()) == int(truth.sum())


def test_the_seg_names_the_structure_model_and_source_series(tmp_path, write_dicom_series):
    scan, _ = box_scan()
    series = write_dicom_series(tmp_path / "series", scan, AFFINE, series_uid="1.2.826.0.1.3680043.2.1")
    predict_dicom(Threshold(), series, tmp_path / "result.dcm", model_name="threshold", model_version="abc",
                  structure="prostate")
    seg = hd.seg.segread(str(tmp_path / "result.dcm"))
    segment = seg.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "41216001"  # SNOMED CT prostate
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "mednca" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.3680043.2.1"
    assert seg.SegmentationType == "BINARY" and seg.ManufacturerModelName == "threshold"


def test_outputs_and_reports_beside_the_seg(tmp_path, write_dicom_series):
    from mednca.pipeline.quality import ReviewRule

    scan, _ = box_scan()
    series = write_dicom_series(tmp_path / "series", scan, AFFINE)
    lines = []
    written = predict_dicom(Threshold(), series, tmp_path / "out" / "result.dcm", ensemble=2,
                            review=ReviewRule(0.1, 2), log=lines.append)
    assert [p.name for p in written] == ["result.dcm", "result_prob.nii.gz", "result_std.nii.gz", "result.json"]
    report = json.loads((tmp_path / "out" / "result.json").read_text())
    assert report["review"] is False and report["volume_ml"] == pytest.approx(76 * 0.8 * 0.9 * 2.5 / 1000, abs=1e-4)
    assert lines == [f"series: {report['volume_ml']:.2f} mL, quality {report['quality']:.4g} - looks fine"]
    with pytest.raises(OutputExistsError, match="already exists; pass --overwrite"):
        predict_dicom(Threshold(), series, tmp_path / "out" / "result.dcm")
    with pytest.raises(DataError, match=r"must end in .dcm \(DICOM SEG\) or .nii.gz"):
        predict_dicom(Threshold(), series, tmp_path / "result.png")


def test_cli_refuses_series_for_nifti_input(tmp_path, capsys):
    scan, _ = box_scan()
    nib.save(nib.Nifti1Image(scan.astype(np.int16), AFFINE), str(tmp_path / "a.nii.gz"))
    assert main(["predict", "--model", "hippocampus", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "m.nii.gz"),
                 "--series", "1.2.3"]) == 1
    assert "--series picks a DICOM series" in capsys.readouterr().err


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason="needs ../shared/data/Task04_Hippocampus")
def test_a_hippocampus_case_as_dicom_gives_the_nifti_mask(tmp_path, write_dicom_series, capsys):
    """The shipped model on a real test case, once from its NIfTI and once from a DICOM series
    written from it: the SEG read back with highdicom equals the NIfTI mask slice by slice."""
    source = nib.load(str(HIPPOCAMPUS / "imagesTr" / "hippocampus_007.nii.gz"))  # a test case of the shared split
    # DICOM stores integers: round the float intensities once, and give both paths the same values
    data = np.round(np.asarray(source.dataobj)).astype(np.int16)
    nifti = nib.Nifti1Image(data, source.affine)
    image = tmp_path / "hippocampus_007.nii.gz"
    nib.save(nifti, str(image))
    series = write_dicom_series(tmp_path / "series", data, nifti.affine)
    assert main(["predict", "--model", "hippocampus", str(image), "-o", str(tmp_path / "mask.nii.gz")]) == 0
    assert main(["predict", "--model", "hippocampus", str(series), "-o", str(tmp_path / "result.dcm")]) == 0
    out = capsys.readouterr().out  # a review line per result
    assert "hippocampus_007.nii.gz: " in out and "series: " in out
    mask = np.asarray(nib.load(str(tmp_path / "mask.nii.gz")).dataobj)
    assert mask.sum() > 100
    frames, positions, _, _ = seg_frames(tmp_path / "result.dcm")
    inverse = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ nifti.affine)  # LPS mm -> voxel
    assert len(frames) == mask.shape[2]
    for frame, position in zip(frames, positions):
        k = int(round((inverse @ [*position, 1])[2]))
        np.testing.assert_array_equal(frame, mask[:, :, k].T, err_msg=f"slice {k}")
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["series"] and report["volume_ml"] > 0
