"""Shared fixtures: a tiny, fast model config and a tiny synthetic MSD task folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from mednca.config import MedNCAConfig


@pytest.fixture(autouse=True)
def _default_denormals():
    """mednca's commands and the benchmark turn on torch.set_flush_denormal for their process;
    tests calling them in process must not leak that setting into the next test."""
    yield
    import torch

    torch.set_flush_denormal(False)


#: The tiny Med-NCA most tests train or run: 8 channels, hidden 16, 3 steps per level, 16² slices.
TINY = dict(channels=8, hidden=16, steps=3, image_size=16, patch_size=8, scale=4, batch_size=4, epochs=1)


@pytest.fixture(scope="session")
def tiny3_config() -> MedNCAConfig:
    """:data:`TINY` as a config (cubic interpolation, as the presets)."""
    return MedNCAConfig(**TINY)


def random_tiny_model(fire_rate: float = 0.5):
    """A :data:`TINY` MedNCA (eval mode) with non-zero weights everywhere: a fresh level's last
    layer is zero (the identity), which would make every output trivial."""
    import torch

    from mednca.nn.model import MedNCA

    torch.manual_seed(0)
    model = MedNCA(MedNCAConfig(**TINY, fire_rate=fire_rate))
    with torch.no_grad():
        for level in (model.level1, model.level2):
            level.fc1.weight.normal_(0.0, 0.3)
    return model.eval()


def randomise_weights(module, seed: int = 0, scale: float = 0.3):
    """Give every weight of ``module`` (the zero-initialised last layers included) random
    non-zero values N(0, scale²) from a generator seeded ``seed``; returns ``module``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


@pytest.fixture(scope="session")
def randomise():
    """The :func:`randomise_weights` helper."""
    return randomise_weights


@pytest.fixture(scope="session")
def random_model():
    """The :func:`random_tiny_model` factory (call it with a fire rate)."""
    return random_tiny_model


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


def train_tiny_run(root: Path) -> tuple[Path, Path]:
    """Train a tiny Med-NCA for one epoch on a 6-case synthetic task with a fixed 2/1/3 split.

    Returns:
        (task folder, run folder)
    """
    import json

    from mednca.data.synthetic import make_synthetic_dataset
    from mednca.pipeline.train import train

    data = make_synthetic_dataset(root / "data", n_cases=6, shape=(20, 20, 6))
    ids = [f"synth_{i:03d}" for i in range(6)]
    split = root / "split.json"
    split.write_text(json.dumps({"train": ids[:2], "val": ids[2:3], "test": ids[3:]}))
    cfg = MedNCAConfig(**TINY, interpolation="linear")
    train(data, root / "run", cfg, split_file=split, progress=False, log=lambda s: None)
    return data, root / "run"


@pytest.fixture(scope="session")
def train_tiny():
    """The :func:`train_tiny_run` helper, for module-scoped fixtures of other test files."""
    return train_tiny_run


def write_dicom_series_files(folder: Path, volume, affine, *, series_uid: str | None = None,
                             description: str = "synthetic", shuffle: bool = True, drop: tuple[str, ...] = ()) -> Path:
    """Write an (X, Y, Z) integer volume with a RAS ``affine`` as a DICOM MR series, one file per
    slice k (pixel row r, column c = volume[c, r, k]); geometry from the affine (RAS -> LPS).

    Args:
        shuffle: Write the files in a scrambled order (readers must sort by position).
        drop: Attribute keywords to leave out of every file (e.g. ``"PixelSpacing"``).

    Returns:
        ``folder``.
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    step_col, step_row = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    orientation = [*(lps[:3, 0] / step_col), *(lps[:3, 1] / step_row)]
    study, series, frame = generate_uid(), series_uid or generate_uid(), generate_uid()
    n = volume.shape[2]
    order = np.random.default_rng(0).permutation(n) if shuffle else np.arange(n)
    for i, k in enumerate(order):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Synthetic", "mednca-test", "", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study, "1", "20260101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series, 3, description
        ds.Modality, ds.Manufacturer, ds.FrameOfReferenceUID = "MR", "mednca tests", frame
        ds.InstanceNumber = int(k) + 1
        ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
        ds.ImagePositionPatient = [round(float(v), 6) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [round(float(step_row), 6), round(float(step_col), 6)]
        ds.SliceThickness = float(np.linalg.norm(lps[:3, 2]))
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype("<i2")).tobytes()
        for keyword in drop:
            delattr(ds, keyword)
        ds.save_as(folder / f"IM{i:04d}", enforce_file_format=True)
    return folder


@pytest.fixture(scope="session")
def write_dicom_series():
    """The :func:`write_dicom_series_files` helper (skips the test without pydicom)."""
    pytest.importorskip("pydicom")
    return write_dicom_series_files
