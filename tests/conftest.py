"""Shared fixtures: a tiny, fast model config and a tiny synthetic MSD task folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mednca.config import MedNCAConfig


@pytest.fixture
def tiny_config() -> MedNCAConfig:
    """A MedNCA config small enough to train a few epochs in well under a second."""
    return MedNCAConfig(channels=8, hidden=16, steps=4, image_size=16, patch_size=8, scale=4,
                        batch_size=4, epochs=2, interpolation="linear")


@pytest.fixture
def synthetic_task(tmp_path: Path) -> Path:
    """A 6-case MSD task folder (imagesTr/, labelsTr/, dataset.json) of 20x20x6 volumes."""
    from mednca.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path / "Task00_Synth", n_cases=6, shape=(20, 20, 6), seed=0)
