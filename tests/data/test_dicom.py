"""Reading DICOM series: geometry from the DICOM attributes, and one-line errors for everything
that would give a wrong grid. Uses pydicom's bundled test files and series written by the
``write_dicom_series`` fixture; nothing is downloaded."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from mednca.data.dicom import is_dicom_input, read_dicom_series  # noqa: E402
from mednca.errors import DataError, MissingDependencyError  # noqa: E402

BUNDLED = Path(pydicom.__file__).parent / "data" / "test_files"
SERIES = BUNDLED / "dicomdirtests"  # small CT and MR series, some broken on purpose


def bundled(name: str) -> str:
    """One of pydicom's bundled test files (never downloaded)."""
    from pydicom.data import get_testdata_file

    return get_testdata_file(name, download=False)
#: An (X, Y, Z) = (12, 10, 6) grid, 0.8 x 0.9 x 2.5 mm, stored as DICOM scanners usually do (LPS).
AFFINE = np.array([[-0.8, 0, 0, 30.0], [0, -0.9, 0, 40.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])


def flipped(volume: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The same scan with voxel axis ``axis`` stored reversed (and the affine that says so)."""
    flip = np.eye(4)
    flip[axis, axis], flip[axis, 3] = -1, volume.shape[axis] - 1
    return np.flip(volume, axis), affine @ flip


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine))
    return np.asarray(image.dataobj), image.affine


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).integers(-100, 900, (12, 10, 6))


def test_a_bundled_ct_series_reads_on_its_dicom_geometry():
    series = read_dicom_series(SERIES / "98892001" / "CT5N")
    assert series.data.shape == (16, 16, 5) and series.data.dtype == np.float32
    # ImageOrientationPatient (1,0,0 / 0,1,0), PixelSpacing 0.488281, slices 2.5 mm apart: LPS -> RAS
    np.testing.assert_allclose(series.affine, [[-0.488281, 0, 0, 72.199997], [0, -0.488281, 0, 143.0],
                                               [0, 0, 2.5, -1.2375], [0, 0, 0, 1]], atol=1e-5)
    first = series.datasets[0]  # the lowest slice, in modality units (HU)
    assert float(first.ImagePositionPatient[2]) == pytest.approx(-1.2375)
    hu = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_array_equal(series.data[:, :, 0], hu.T)


@pytest.mark.parametrize("variant", ["head-first", "feet-first", "flipped rows", "flipped columns", "rotated"])
def test_a_series_gives_the_scan_it_was_written_from(tmp_path, write_dicom_series, volume, variant):
    data, affine = volume, AFFINE
    if variant == "feet-first":  # slices stored from head to feet: the normal points the other way
        data, affine = flipped(volume, AFFINE, 2)
    elif variant == "flipped rows":
        data, affine = flipped(volume, AFFINE, 1)
    elif variant == "flipped columns":
        data, affine = flipped(volume, AFFINE, 0)
    elif variant == "rotated":  # an oblique in-plane orientation (30 degrees about the slice normal)
        c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
        rotation = np.eye(4)
        rotation[:2, :2] = [[c, -s], [s, c]]
        affine = rotation @ AFFINE
    series = read_dicom_series(write_dicom_series(tmp_path / "series", data, affine))
    got, want = canonical(series.data, series.affine), canonical(data, affine)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-4)


def test_a_zip_reads_like_the_folder_and_other_files_are_ignored(tmp_path, write_dicom_series, volume):
    folder = write_dicom_series(tmp_path / "series", volume, AFFINE)
    (folder / "README.txt").write_text("not DICOM")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"study/{f.name}")
    a, b = read_dicom_series(folder), read_dicom_series(archive)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert is_dicom_input(folder) and is_dicom_input(archive)


def test_nifti_input_is_not_dicom(tmp_path, volume):
    nib.save(nib.Nifti1Image(volume.astype(np.int16), AFFINE), str(tmp_path / "a.nii.gz"))
    assert not is_dicom_input(tmp_path) and not is_dicom_input(tmp_path / "a.nii.gz")


def test_several_series_are_listed_and_one_is_picked(tmp_path, write_dicom_series, volume):
    write_dicom_series(tmp_path / "study" / "t1", volume, AFFINE, series_uid="1.2.3.1", description="T1")
    write_dicom_series(tmp_path / "study" / "t2", volume + 1, AFFINE, series_uid="1.2.3.2", description="T2")
    with pytest.raises(DataError, match=r"2 image series; pick one with --series UID: 1\.2\.3\.1 \(MR, 'T1', 6"):
        read_dicom_series(tmp_path / "study")
    series = read_dicom_series(tmp_path / "study", "1.2.3.2")
    assert series.series_uid == "1.2.3.2" and series.description == "T2"
    assert series.data.min() == volume.min() + 1
    with pytest.raises(DataError, match="has no series 9.9"):
        read_dicom_series(tmp_path / "study", "9.9")


def test_a_missing_slice_is_refused(tmp_path, write_dicom_series, volume):
    folder = write_dicom_series(tmp_path / "s", volume, AFFINE, shuffle=False)
    (folder / "IM0003").unlink()
    with pytest.raises(DataError, match=r"uneven slice spacing \(gaps of 2.5 to 5 mm\)"):
        read_dicom_series(folder)


def test_bundled_broken_series_are_refused():
    with pytest.raises(DataError, match="uneven slice spacing"):
        read_dicom_series(SERIES / "77654033" / "CT2")  # 4 slices, 200 mm missing between two
    with pytest.raises(DataError, match="not parallel"):
        read_dicom_series(SERIES / "98892003" / "MR700")  # a multi-plane localizer
    with pytest.raises(DataError, match="holds 3 image series"):
        read_dicom_series(SERIES / "98892003" / "MR1")


def test_duplicate_positions_are_refused(tmp_path, write_dicom_series, volume):
    write_dicom_series(tmp_path / "s" / "echo1", volume, AFFINE, series_uid="1.2.3")
    write_dicom_series(tmp_path / "s" / "echo2", volume, AFFINE, series_uid="1.2.3")
    with pytest.raises(DataError, match="several images at the same position"):
        read_dicom_series(tmp_path / "s")


def test_gantry_tilt_is_refused(tmp_path, write_dicom_series, volume):
    tilted = AFFINE.copy()
    tilted[1, 2] = 0.5  # each slice shifted 0.5 mm along y: the stack is not along the normal
    with pytest.raises(DataError, match="gantry tilt"):
        read_dicom_series(write_dicom_series(tmp_path / "s", volume, tilted))


@pytest.mark.parametrize("keyword", ["PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient"])
def test_missing_geometry_is_refused(tmp_path, write_dicom_series, volume, keyword):
    folder = write_dicom_series(tmp_path / "s", volume, AFFINE, drop=(keyword,))
    with pytest.raises(DataError, match=f"no valid {keyword}, so the slice geometry is unknown"):
        read_dicom_series(folder)


def test_no_dicom_and_single_images_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="holds no DICOM files"):
        read_dicom_series(tmp_path)
    with pytest.raises(DataError, match="single DICOM image; give the folder"):
        read_dicom_series(bundled("CT_small.dcm"))
    with pytest.raises(DataError, match="does not exist"):
        read_dicom_series(tmp_path / "missing")


@pytest.mark.parametrize("name, kind", [("test-SR.dcm", "structured report"), ("rtstruct.dcm", "RT structure set")])
def test_a_non_image_object_is_refused(tmp_path, name, kind):
    shutil.copy(bundled(name), tmp_path / name)
    with pytest.raises(DataError, match=f"no image series to segment, only non-image DICOM objects \\({kind}\\)"):
        read_dicom_series(tmp_path)


def test_compressed_pixels_without_a_decoder_name_the_package(tmp_path):
    source = pydicom.dcmread(bundled("JPEG-lossy.dcm"))  # 12-bit JPEG: no decoder here (Pillow cannot)
    try:
        source.pixel_array
        pytest.skip("a JPEG decoder for 12-bit data is installed")
    except Exception:  # noqa: BLE001 - what we need: pydicom cannot decode it
        pass
    for k in range(2):
        ds = pydicom.dcmread(bundled("JPEG-lossy.dcm"))
        ds.SeriesInstanceUID = "1.2.3"
        ds.ImageOrientationPatient, ds.PixelSpacing = [1, 0, 0, 0, 1, 0], [1, 1]
        ds.ImagePositionPatient = [0, 0, 2.0 * k]
        ds.save_as(tmp_path / f"im{k}.dcm")
    with pytest.raises(MissingDependencyError, match="compressed .* install one, e.g. pip install pylibjpeg"):
        read_dicom_series(tmp_path)


@pytest.mark.parametrize("keyword, value, message", [
    ("ImageOrientationPatient", [1, 0, 0, 0, 2, 0], "not two unit vectors at right angles"),
    ("PixelSpacing", [0.9, -0.8], "PixelSpacing of .* is not positive"),
])
def test_impossible_geometry_is_refused(tmp_path, write_dicom_series, volume, keyword, value, message):
    folder = write_dicom_series(tmp_path / "s", volume, AFFINE)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        setattr(ds, keyword, value)
        ds.save_as(f)
    with pytest.raises(DataError, match=message):
        read_dicom_series(folder)


def test_a_damaged_zip_member_is_a_one_line_error(tmp_path, write_dicom_series, volume):
    folder = write_dicom_series(tmp_path / "s", volume, AFFINE)
    archive = tmp_path / "s.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f.name)
    data = bytearray(archive.read_bytes())
    start = data.index(b"IM0000") + len("IM0000") + 40  # inside the first member's compressed data
    data[start:start + 64] = bytes(64)
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match="cannot read s.zip:IM0000"):
        read_dicom_series(archive)


def test_positions_rounded_to_a_hundredth_of_a_mm_are_even(tmp_path, write_dicom_series, volume):
    thin = AFFINE.copy()
    thin[2, 2] = 0.625  # stored positions 0.0, 0.62 (0.625), 1.25, 1.88 (1.875), ...
    folder = write_dicom_series(tmp_path / "s", volume, thin)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [round(float(v), 2) for v in ds.ImagePositionPatient]
        ds.save_as(f)
    assert read_dicom_series(folder).affine[2, 2] == pytest.approx(0.625, abs=0.01)
