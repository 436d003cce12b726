"""Volumes <-> slices: shapes per axis, normalisation, binary labels, round trip, load_slices."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mednca.config import MedNCAConfig
from mednca.data.cases import find_cases
from mednca.data.slices import image_slices, label_slices, load_slices, normalize, to_volume
from mednca.data.synthetic import make_synthetic_dataset

SHAPE = (24, 20, 8)


def smooth_volume() -> np.ndarray:
    x, y, z = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    return (np.sin(x / 6.0) + np.cos(y / 5.0) + 0.3 * np.sin(z / 3.0)).astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_image_slices_shape_and_normalisation(axis: int) -> None:
    vol = np.random.default_rng(axis).normal(50, 20, SHAPE).astype(np.float32)
    slices = image_slices(vol, axis, 16)
    assert slices.shape == (SHAPE[axis], 1, 16, 16)
    assert slices.dtype == torch.float32
    flat = slices.flatten(1)
    torch.testing.assert_close(flat.min(1).values, torch.zeros(SHAPE[axis]))
    torch.testing.assert_close(flat.max(1).values, torch.ones(SHAPE[axis]))


def test_image_slices_take_the_right_slice() -> None:
    vol = np.zeros(SHAPE, np.float32)
    vol[:, :, 3] = np.linspace(0, 1, SHAPE[0])[:, None]  # only z-slice 3 is non-constant
    slices = image_slices(vol, 2, 16, "linear")
    assert [bool(s.max() > 0) for s in slices] == [k == 3 for k in range(SHAPE[2])]
    # the gradient runs along the rows of the slice (axis 0 of the volume)
    assert bool((slices[3, 0, -1] > slices[3, 0, 0]).all())


def test_constant_slice_becomes_zeros() -> None:
    vol = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    vol[:, :, 5] = 7.0
    slices = image_slices(vol, 2, 16)
    assert torch.equal(slices[5], torch.zeros(1, 16, 16))
    assert float(slices[4].max()) == pytest.approx(1.0)


def test_normalize_values() -> None:
    images = torch.tensor([[[[2.0, 4.0], [6.0, 10.0]]], [[[3.0, 3.0], [3.0, 3.0]]]])
    expected = torch.tensor([[[[0.0, 0.25], [0.5, 1.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(normalize(images), expected)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_label_slices_binary(axis: int) -> None:
    mask = (np.random.default_rng(1).random(SHAPE) > 0.7).astype(np.uint8)
    slices = label_slices(mask, axis, 16)
    assert slices.shape == (SHAPE[axis], 1, 16, 16)
    assert set(torch.unique(slices).tolist()) == {0.0, 1.0}
    # a slice without foreground stays empty, a full one stays full
    mask[:] = 0
    idx = [slice(None)] * 3
    idx[axis] = 1
    mask[tuple(idx)] = 1
    slices = label_slices(mask, axis, 16)
    assert slices[1].min() == 1 and slices[0].max() == 0 and slices[2].max() == 0


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_to_volume_shape(axis: int) -> None:
    n = SHAPE[axis]
    back = to_volume(torch.rand(n, 1, 16, 16), SHAPE, axis)
    assert back.shape == SHAPE
    assert back.dtype == np.float32


def test_to_volume_wrong_slice_count() -> None:
    with pytest.raises(ValueError, match="do not fit axis 2"):
        to_volume(torch.rand(5, 1, 16, 16), SHAPE, 2)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_round_trip_smooth_volume(axis: int, interpolation: str) -> None:
    vol = smooth_volume()
    back = to_volume(image_slices(vol, axis, 16, interpolation), SHAPE, axis)
    moved = np.moveaxis(vol, axis, 0)
    lo, hi = moved.min((1, 2), keepdims=True), moved.max((1, 2), keepdims=True)
    expected = np.moveaxis((moved - lo) / (hi - lo), 0, axis)  # per-slice normalised original
    assert np.abs(back - expected).max() < 0.03


def test_load_slices_synthetic(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "task", n_cases=3, shape=(20, 20, 6))
    cases = find_cases(root)
    config = MedNCAConfig(channels=8, hidden=16, steps=3, image_size=16, patch_size=8, scale=4,
                          batch_size=4, epochs=1)
    done: list[int] = []
    data = load_slices(cases, config, progress=done.append)
    assert done == [1, 2, 3]
    assert len(data) == 18
    assert data.images.shape == data.labels.shape == (18, 1, 16, 16)
    assert data.case_ids == ["synth_000", "synth_001", "synth_002"]
    assert data.case_index.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert set(torch.unique(data.labels).tolist()) == {0.0, 1.0}
    expected_fg = []
    for case in cases:
        label = np.asanyarray(nib.load(str(case.label)).dataobj)
        expected_fg += [bool(label[:, :, k].any()) for k in range(6)]
    assert data.foreground().tolist() == expected_fg
    assert any(expected_fg)


def test_load_slices_empty() -> None:
    config = MedNCAConfig(channels=8, hidden=16, steps=3, image_size=16, patch_size=8)
    data = load_slices([], config)
    assert len(data) == 0 and data.images.shape == (0, 1, 16, 16) and data.case_ids == []


def test_percentile_normalization_clips_bright_outliers():
    images = torch.zeros(1, 1, 20, 20)
    images[0, 0, :10] = 1.0  # anatomy: half of the 400 pixels
    images[0, 0, 0, 0] = 100.0  # one very bright pixel (< 1 % of the slice)
    minmax = normalize(images)
    assert minmax.max() == 1 and minmax[0, 0, 1, 1] == pytest.approx(0.01)
    pct = normalize(images, "percentile")
    assert pct.min() == 0 and pct.max() == 1
    assert pct[0, 0, 1, 1] == 1  # the anatomy now spans the range; the outlier is clipped
    assert torch.equal(normalize(torch.full((2, 1, 4, 4), 3.0), "percentile"), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="normalisation"):
        normalize(images, "zscore")


def test_image_slices_use_the_normalization():
    vol = np.zeros((16, 16, 3), np.float32)
    vol[:8] = 1.0
    vol[0, 0, :] = 50.0
    assert image_slices(vol, 2, 16, "linear", "percentile")[:, 0, 4, 4].min() == 1.0
    assert image_slices(vol, 2, 16, "linear")[:, 0, 4, 4].max() < 0.1


def test_robust_normalization_maps_the_middle_99_percent_to_unit_range():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 20, 20, generator=g) * 100.0
    images[0, 0, 0, 0] = 1e4  # one bright outlier (PROMISE12 has voxels at ~10x the 99th percentile)
    images[0, 0, 0, 1] = -1e4
    out = normalize(images, "robust")
    assert out.min() >= 0.0 and out.max() <= 1.0
    flat = images.flatten(1)
    lo, hi = torch.quantile(flat, 0.005, dim=1), torch.quantile(flat, 0.995, dim=1)
    for i in range(3):
        inside = (flat[i] > lo[i]) & (flat[i] < hi[i])
        expected = (flat[i][inside] - lo[i]) / (hi[i] - lo[i])
        assert torch.allclose(out[i].flatten()[inside], expected, atol=1e-6)
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, 0, 1] == 0.0
    # the tissue keeps most of the range instead of being squeezed into [0, 0.01] by the outlier
    assert normalize(images, "minmax")[0].std() < 0.05 < out[0].std()
    assert torch.equal(normalize(torch.full((2, 1, 4, 4), 3.0), "robust"), torch.zeros(2, 1, 4, 4))
