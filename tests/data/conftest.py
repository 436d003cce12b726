"""Fixtures of the data tests: write small NIfTI files into tmp folders."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest


def _write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray = np.eye(4)) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    if array.dtype == np.int64:  # nibabel refuses int64 without an explicit dtype
        array = array.astype(np.int32)
    nib.save(nib.Nifti1Image(array, np.asarray(affine, dtype=float)), str(path))
    return path


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, array, affine=np.eye(4))`` -> path (parent folders are created)."""
    return _write_nifti
