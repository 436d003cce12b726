"""Segmentation metrics on hard masks: Dice, 95 % Hausdorff distance (mm), volumes.

Conventions: Dice of two empty masks is 1 (nothing to find, nothing found) and of one empty and
one non-empty mask is 0. HD95 is undefined (``nan``) when either mask is empty.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient of two binary masks of equal shape (both empty -> 1, one empty -> 0)."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {target.shape}")
    total = pred.sum() + target.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, target).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                    border_value=0)
    return mask & ~eroded


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    from scipy import ndimage

    surf_a, surf_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surf_b, sampling=spacing)
    return to_b[surf_a]


def hd95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95 % Hausdorff distance in mm (``nan`` if a mask is empty).

    The larger of the two directed 95th percentiles of surface distances (pred -> target and
    target -> pred), the definition of medpy and MONAI.

    Args:
        pred, target: Binary masks of equal shape.
        spacing: Voxel size in mm per axis (default 1 mm).
    """
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if pred.shape != target.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {target.shape}")
    if not pred.any() or not target.any():
        return float("nan")
    spacing = tuple(spacing) if spacing is not None else (1.0,) * pred.ndim
    return float(max(np.percentile(surface_distances(pred, target, spacing), 95),
                     np.percentile(surface_distances(target, pred, spacing), 95)))


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a binary mask in millilitres (1 ml = 1000 mm^3)."""
    return float(np.asarray(mask, bool).sum() * np.prod(spacing) / 1000.0)


def case_metrics(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, HD95 (mm) and predicted/reference volumes (ml) of one case."""
    return {
        "dice": dice(pred, target),
        "hd95_mm": hd95(pred, target, spacing),
        "volume_pred_ml": volume_ml(pred, spacing),
        "volume_gt_ml": volume_ml(target, spacing),
    }


def summarize(rows: Sequence[dict[str, float]], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean, std (population), median, min and max of each key over cases, ignoring nan."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows], dtype=float)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            out[key] = {"mean": float("nan"), "std": float("nan"), "median": float("nan"),
                        "min": float("nan"), "max": float("nan"), "n": 0}
            continue
        out[key] = {"mean": float(values.mean()), "std": float(values.std()),
                    "median": float(np.median(values)), "min": float(values.min()),
                    "max": float(values.max()), "n": int(len(values))}
    return out
