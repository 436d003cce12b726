"""Any voxel orientation: a model that records its training orientation predicts the same mask for
the same scan stored with flipped or permuted axes; models without the record use volumes as stored."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from mednca.config import is_axis_codes
from mednca.data.synthetic import make_case
from mednca.data.volumes import axis_codes, reorient, restore_orientation
from mednca.nn.model import MedNCA
from mednca.pipeline.predict import predict_file, predict_volume

SHAPE = (20, 18, 6)
AFFINE = np.diag([1.5, 0.8, 3.0, 1.0])  # RAS
AFFINE[:3, 3] = [-12.5, 30.25, 7.0]


def stored_as(data: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same scan with its array axes permuted and flipped to ``codes``, and the matching affine."""
    from nibabel import orientations as ornt

    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(tuple(codes)))
    new = ornt.apply_orientation(data, transform)
    return np.ascontiguousarray(new), affine @ ornt.inv_ornt_aff(transform, data.shape)


def world_of_max(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    index = np.array(np.unravel_index(int(np.argmax(data)), data.shape) + (1,), float)
    return (affine @ index)[:3]


def test_stored_as_is_the_same_scan():
    data = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    for codes in ("LPS", "ASR", "IRP"):
        new, affine = stored_as(data, AFFINE, codes)
        assert axis_codes(affine) == codes
        assert np.allclose(world_of_max(new, affine), world_of_max(data, AFFINE))


@pytest.mark.parametrize("codes", ["LPS", "PIR", "RAI"])
def test_reorient_round_trip(codes):
    data = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    new, affine = stored_as(data, AFFINE, codes)
    back = reorient(new, affine, "RAS")
    assert np.array_equal(back, data)
    assert np.array_equal(restore_orientation(back, affine, "RAS"), new)
    assert reorient(new, affine, None) is new


def test_axis_codes_are_validated():
    assert is_axis_codes("RAS") and is_axis_codes("PIL")
    for bad in ("RRS", "RA", "XYZ", "ras ", None, 3):
        assert not is_axis_codes(bad)


@pytest.fixture(scope="module")
def model(random_model) -> MedNCA:
    m = random_model()
    m.config = m.config.replace(orientation="RAS")
    return m


@pytest.mark.parametrize("codes", ["LPS", "ASL", "RAI"])
def test_same_mask_in_any_orientation(tmp_path, model, codes):
    image = make_case(np.random.default_rng(3), SHAPE)[0]
    ras = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(image, AFFINE), str(ras))
    other_data, other_affine = stored_as(image, AFFINE, codes)
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(other_data, other_affine), str(other))
    predict_file(model, ras, tmp_path / "ras_mask.nii.gz", seed=4, ensemble=2)
    predict_file(model, other, tmp_path / "other_mask.nii.gz", seed=4, ensemble=2)
    for tag in ("mask", "mask_prob"):
        a = nib.load(str(tmp_path / f"ras_{tag}.nii.gz"))
        b = nib.load(str(tmp_path / f"other_{tag}.nii.gz"))
        assert np.allclose(b.affine, other_affine) and b.shape == other_data.shape  # the input's own grid
        assert np.array_equal(reorient(np.asanyarray(b.dataobj), b.affine, "RAS"), np.asanyarray(a.dataobj))
    assert nib.load(str(tmp_path / "ras_mask.nii.gz")).get_fdata().sum() > 0  # not trivially empty


def test_without_record_volumes_are_used_as_stored(tmp_path, random_model):
    m = random_model()
    assert m.config.orientation is None
    image = make_case(np.random.default_rng(3), SHAPE)[0]
    flipped, affine = stored_as(image, AFFINE, "LAS")
    path = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(flipped, affine), str(path))
    predict_file(m, path, tmp_path / "mask.nii.gz", seed=4)
    expected = predict_volume(m, flipped, 1, torch.Generator().manual_seed(4)).mask
    assert np.array_equal(np.asanyarray(nib.load(str(tmp_path / "mask.nii.gz")).dataobj), expected)
