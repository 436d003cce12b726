"""Dice, HD95, volumes and summaries against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mednca.pipeline.metrics import case_metrics, dice, hd95, summarize, volume_ml


def mask(shape, *voxels) -> np.ndarray:
    m = np.zeros(shape, bool)
    for v in voxels:
        m[v] = True
    return m


def test_dice_hand_computed() -> None:
    pred = mask((4, 4, 2), (0, 0, 0), (0, 1, 0), (0, 2, 0))  # 3 voxels
    target = mask((4, 4, 2), (0, 1, 0), (0, 2, 0), (1, 1, 0), (1, 2, 0))  # 4 voxels, 2 shared
    assert dice(pred, target) == pytest.approx(2 * 2 / 7)
    target2 = mask((4, 4, 2), (0, 0, 0), (0, 1, 0), (0, 2, 0), (3, 3, 1))  # 3 shared of 3 and 4
    assert dice(pred, target2) == pytest.approx(2 * 3 / 7)
    assert dice(pred, pred) == 1.0


def test_dice_accepts_label_values() -> None:
    assert dice(np.array([0, 2, 5]), np.array([0, 1, 0])) == pytest.approx(2 / 3)


def test_dice_empty_conventions() -> None:
    empty = np.zeros((3, 3, 3), bool)
    some = mask((3, 3, 3), (1, 1, 1))
    assert dice(empty, empty) == 1.0
    assert dice(empty, some) == 0.0
    assert dice(some, empty) == 0.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 2)))
    with pytest.raises(ValueError, match="shapes differ"):
        hd95(np.ones((3, 3, 3)), np.ones((3, 3, 2)))


@pytest.mark.parametrize("axis, spacing, expected", [
    (0, (2.0, 1.0, 1.0), 6.0),
    (1, (2.0, 0.5, 3.0), 1.5),
    (2, (2.0, 0.5, 3.0), 9.0),
])
def test_hd95_single_voxels_anisotropic(axis: int, spacing, expected: float) -> None:
    a, b = [2, 2, 2], [2, 2, 2]
    b[axis] += 3
    shape = (8, 8, 8)
    assert hd95(mask(shape, tuple(a)), mask(shape, tuple(b)), spacing) == pytest.approx(expected)


def test_hd95_diagonal_offset() -> None:
    shape = (6, 6, 6)
    assert hd95(mask(shape, (0, 0, 0)), mask(shape, (3, 4, 0)), (1.0, 1.0, 1.0)) == pytest.approx(5.0)
    assert hd95(mask(shape, (0, 0, 0)), mask(shape, (3, 4, 0)), None) == pytest.approx(5.0)


def test_hd95_identical_and_empty() -> None:
    m = np.zeros((6, 6, 4), bool)
    m[1:4, 2:5, 1:3] = True
    assert hd95(m, m, (1.0, 2.0, 3.0)) == 0.0
    assert math.isnan(hd95(np.zeros_like(m), m, (1.0, 1.0, 1.0)))
    assert math.isnan(hd95(m, np.zeros_like(m), (1.0, 1.0, 1.0)))
    assert math.isnan(hd95(np.zeros_like(m), np.zeros_like(m), (1.0, 1.0, 1.0)))


def test_volume_ml() -> None:
    m = np.zeros((10, 10, 10), bool)
    m[:5, :4, :2] = True  # 40 voxels
    assert volume_ml(m, (1.0, 1.0, 1.0)) == pytest.approx(0.04)
    assert volume_ml(m, (2.0, 0.5, 2.5)) == pytest.approx(0.1)
    assert volume_ml(np.zeros((2, 2, 2)), (5.0, 5.0, 5.0)) == 0.0


def test_case_metrics() -> None:
    pred = mask((6, 6, 6), (1, 1, 1))
    target = mask((6, 6, 6), (1, 1, 1), (1, 1, 2))
    out = case_metrics(pred, target, (1.0, 1.0, 4.0))
    assert out["dice"] == pytest.approx(2 / 3)
    # directed: pred -> target [0], target -> pred [0, 4]; HD95 is the larger 95th percentile
    assert out["hd95_mm"] == pytest.approx(max(0.0, np.percentile([0.0, 4.0], 95)))
    assert out["volume_pred_ml"] == pytest.approx(0.004)
    assert out["volume_gt_ml"] == pytest.approx(0.008)


def test_summarize() -> None:
    rows = [{"d": 0.5, "h": 1.0}, {"d": 1.0, "h": float("nan")}, {"d": 0.0, "h": 3.0}]
    s = summarize(rows, ["d", "h"])
    assert s["d"] == pytest.approx({"mean": 0.5, "std": math.sqrt(1 / 6), "median": 0.5, "min": 0.0,
                                    "max": 1.0, "n": 3})
    assert s["h"] == pytest.approx({"mean": 2.0, "std": 1.0, "median": 2.0, "min": 1.0, "max": 3.0, "n": 2})
    assert isinstance(s["d"]["n"], int)


def test_summarize_all_nan() -> None:
    s = summarize([{"h": float("nan")}], ["h"])
    assert s["h"]["n"] == 0 and math.isnan(s["h"]["mean"]) and math.isnan(s["h"]["std"])
