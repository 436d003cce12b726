"""read_image / read_label / check_pair / binarize."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mednca.data.volumes import Volume, binarize, check_pair, read_image, read_label
from mednca.errors import DataError

AFFINE = np.diag([1.5, 0.5, 3.0, 1.0])


def test_read_image_3d(tmp_path: Path, write_nifti) -> None:
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    vol = read_image(write_nifti(tmp_path / "a.nii.gz", data, AFFINE))
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_array_equal(vol.affine, AFFINE)
    assert vol.spacing == (1.5, 0.5, 3.0)
    assert vol.path == tmp_path / "a.nii.gz"


def test_read_image_3d_rejects_other_channel(tmp_path: Path, write_nifti) -> None:
    path = write_nifti(tmp_path / "a.nii.gz", np.zeros((4, 4, 2), np.float32))
    with pytest.raises(DataError, match="channel 1 does not exist"):
        read_image(path, 1)


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_read_image_4d_channel(tmp_path: Path, write_nifti, channel: int) -> None:
    data = np.stack([np.full((4, 5, 3), 10.0 * (k + 1), np.float32) for k in range(3)], -1)
    data[0, 0, 0, :] = [1, 2, 3]
    vol = read_image(write_nifti(tmp_path / "m.nii.gz", data), channel)
    assert vol.data.shape == (4, 5, 3)
    np.testing.assert_array_equal(vol.data, data[..., channel])


@pytest.mark.parametrize("channel", [2, -1])
def test_read_image_4d_channel_out_of_range(tmp_path: Path, write_nifti, channel: int) -> None:
    path = write_nifti(tmp_path / "m.nii.gz", np.zeros((4, 4, 2, 2), np.float32))
    with pytest.raises(DataError, match=r"has 2 channel\(s\)"):
        read_image(path, channel)


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 2, 2, 2)], ids=["2d", "5d"])
def test_read_image_wrong_ndim(tmp_path: Path, write_nifti, shape) -> None:
    path = write_nifti(tmp_path / "x.nii.gz", np.zeros(shape, np.float32))
    with pytest.raises(DataError, match="expected a 3D volume"):
        read_image(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_read_image_non_finite(tmp_path: Path, write_nifti, bad: float) -> None:
    data = np.zeros((4, 4, 2), np.float32)
    data[1, 2, 1] = bad
    path = write_nifti(tmp_path / "x.nii.gz", data)
    with pytest.raises(DataError, match="1 NaN or infinite"):
        read_image(path)


def test_read_image_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(DataError, match="cannot read"):
        read_image(path)
    with pytest.raises(DataError, match="cannot read"):
        read_label(path)


def test_read_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.nii.gz")


def test_read_label_int_and_integral_float(tmp_path: Path, write_nifti) -> None:
    data = np.zeros((4, 4, 2), np.uint8)
    data[1, 1, 1], data[2, 2, 0] = 1, 3
    lab = read_label(write_nifti(tmp_path / "l.nii.gz", data))
    assert lab.data.dtype == np.int64
    np.testing.assert_array_equal(lab.data, data)
    lab = read_label(write_nifti(tmp_path / "f.nii.gz", data.astype(np.float32)))
    np.testing.assert_array_equal(lab.data, data)


def test_read_label_rejects_non_integer(tmp_path: Path, write_nifti) -> None:
    data = np.zeros((4, 4, 2), np.float32)
    data[0, 0, 0] = 0.5
    with pytest.raises(DataError, match="non-integer"):
        read_label(write_nifti(tmp_path / "l.nii.gz", data))


def test_read_label_rejects_4d(tmp_path: Path, write_nifti) -> None:
    with pytest.raises(DataError, match="expected 3D"):
        read_label(write_nifti(tmp_path / "l.nii.gz", np.zeros((4, 4, 2, 2), np.uint8)))


def _vol(shape, affine=AFFINE, name="x.nii.gz") -> Volume:
    return Volume(np.zeros(shape, np.float32), np.asarray(affine, float), None, Path(name))


def test_check_pair() -> None:
    check_pair(_vol((4, 4, 2)), _vol((4, 4, 2), AFFINE + 1e-5))  # within tolerance
    with pytest.raises(DataError, match=r"shape \(4, 4, 2\).*shape \(4, 4, 3\)"):
        check_pair(_vol((4, 4, 2), name="img.nii.gz"), _vol((4, 4, 3), name="lab.nii.gz"))
    shifted = AFFINE.copy()
    shifted[0, 3] = 2.0
    with pytest.raises(DataError, match="different affines"):
        check_pair(_vol((4, 4, 2)), _vol((4, 4, 2), shifted))


def test_binarize() -> None:
    label = np.array([0, 1, 2, 3, 2, 0])
    merged = binarize(label, None)
    assert merged.dtype == np.uint8
    np.testing.assert_array_equal(merged, [0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(binarize(label, 2), [0, 0, 1, 0, 1, 0])


def test_read_image_single_channel_4d_rejects_channel_1(tmp_path: Path, write_nifti) -> None:
    path = write_nifti(tmp_path / "s.nii.gz", np.zeros((4, 4, 2, 1), np.float32))
    assert read_image(path, 0).data.shape == (4, 4, 2)
    with pytest.raises(DataError, match="channel 1 does not exist"):
        read_image(path, 1)


@pytest.mark.parametrize("affine", [np.zeros((4, 4)), np.diag([1.0, 0.0, 1.0, 1.0]), np.diag([1.0, np.nan, 1.0, 1.0])])
def test_a_volume_without_a_valid_affine_is_refused(tmp_path, affine):
    """An all-zero affine made evaluate report HD95 0 mm and volumes 0 ml for masks that differ."""
    import nibabel as nib

    from mednca.data.volumes import read_image, read_label

    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None)
    img.header.set_sform(affine, code=1)  # the audit's header: sform in use, qform unset
    img.header.set_qform(None, code=0)
    path = tmp_path / "bad.nii.gz"
    nib.save(img, str(path))
    assert not np.allclose(nib.load(str(path)).affine, np.eye(4))
    for read in (read_image, read_label):
        with pytest.raises(DataError, match="no valid voxel-to-world matrix"):
            read(path)


def test_headers_claiming_too_many_voxels_are_refused_before_any_voxel_is_read(tmp_path):
    small = tmp_path / "small.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(small))
    with pytest.raises(DataError, match=r"claims 2 x 2 x 2 voxels, more than this server accepts \(7\)$"):
        read_image(small, max_voxels=7)
    raw = bytearray(small.read_bytes())
    raw[40:48] = np.array([3, 2048, 2048, 512], dtype="<i2").tobytes()  # dim[0..3] of the NIfTI-1 header
    huge = tmp_path / "huge.nii"
    huge.write_bytes(bytes(raw))  # 2^31 voxels claimed, 8 stored
    with pytest.raises(DataError, match=r"claims 2048 x 2048 x 512 voxels, more than mednca reads .*header right"):
        read_image(huge)
