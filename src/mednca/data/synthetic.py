"""A procedural, deterministic MRI-like dataset for the demo and the tests.

Each case is a small 3D volume: a smooth "tissue" background inside an elliptical body, one
labelled ellipsoidal structure (brighter, with a darker rim, like a structure in its sheath),
and unlabelled bright blobs as distractors, under a smooth bias field and Rician-like noise.
Telling the structure from the blobs needs shape and context, not just a threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")


def _ellipsoid(coords, centre, radii, angle: float) -> np.ndarray:
    """Normalised squared radius of an ellipsoid rotated by ``angle`` in the (x, y) plane."""
    x, y, z = (c - m for c, m in zip(coords, centre))
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = ca * x + sa * y, -sa * x + ca * y
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (z / radii[2]) ** 2


def make_case(rng: np.random.Generator, shape: tuple[int, int, int] = (40, 40, 16)) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (image, label) pair: float32 image in about [0, 1.3], uint8 label {0, 1}."""
    coords = _grid(shape)
    sx, sy, sz = shape
    centre_body = np.array([sx / 2, sy / 2, sz / 2]) + rng.uniform(-2, 2, 3)
    body = _ellipsoid(coords, centre_body, (sx * 0.45, sy * 0.42, sz * 0.9), rng.uniform(0, np.pi)) < 1
    # smooth tissue texture: a few random low-frequency waves
    tissue = np.full(shape, 0.45, np.float32)
    for _ in range(4):
        k = rng.normal(0, 0.25, 3)
        tissue += 0.05 * np.sin(k[0] * coords[0] + k[1] * coords[1] + k[2] * coords[2] + rng.uniform(0, 6.3))
    image = np.where(body, tissue, 0.05).astype(np.float32)
    # the labelled structure
    radii = (rng.uniform(5, 9), rng.uniform(3, 5), rng.uniform(3, 6))
    centre = centre_body + rng.uniform(-6, 6, 3) * np.array([1, 1, 0.3])
    r2 = _ellipsoid(coords, centre, radii, rng.uniform(0, np.pi))
    label = (r2 < 1).astype(np.uint8)
    image[(r2 >= 1) & (r2 < 1.6) & body] -= 0.15  # darker rim
    image[r2 < 1] = 0.75 + 0.05 * rng.standard_normal(int(label.sum())).astype(np.float32)
    # distractors: small bright round blobs away from the structure
    for _ in range(rng.integers(2, 5)):
        c = centre_body + rng.uniform(-12, 12, 3) * np.array([1, 1, 0.3])
        blob = _ellipsoid(coords, c, (2.5, 2.5, 2.0), 0.0) < 1
        blob &= r2 > 2.5
        image[blob & body] = 0.8
    # bias field and noise
    bias = 1 + 0.15 * (coords[0] / sx - 0.5) * rng.uniform(-1, 1) + 0.15 * (coords[1] / sy - 0.5) * rng.uniform(-1, 1)
    image = image * bias
    noise_re, noise_im = rng.normal(0, 0.04, (2, *shape))
    image = np.sqrt((image + noise_re) ** 2 + noise_im ** 2).astype(np.float32)
    return image, label


def make_synthetic_dataset(root: str | Path, n_cases: int = 24, shape: tuple[int, int, int] = (40, 40, 16),
                           seed: int = 0) -> Path:
    """Write ``n_cases`` synthetic cases as an MSD task folder (imagesTr, labelsTr, dataset.json).

    Deterministic for a given ``seed``. Voxels are 1 x 1 x 2 mm.

    Returns:
        The task folder ``root``.
    """
    import nibabel as nib

    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    training = []
    for i in range(n_cases):
        image, label = make_case(np.random.default_rng([seed, i]), shape)
        name = f"synth_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "mednca-synthetic", "description": "Procedural MRI-like volumes (mednca demo)",
            "tensorImageSize": "3D", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "structure"}, "numTraining": n_cases, "numTest": 0,
            "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root
