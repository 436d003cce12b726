"""Inference on a DICOM series: a folder, ``.zip`` or file in; a DICOM SEG or a NIfTI mask out.

The series is read on its acquisition grid (:mod:`mednca.data.dicom`), segmented like any
volume (reoriented to the model's orientation and back), and written either as a DICOM
Segmentation referencing the source images (``-o result.dcm``) or as NIfTI in the DICOM's
patient geometry (``-o mask.nii.gz``). Probability, standard deviation and the review report
go beside it as with NIfTI input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..data.cases import strip_nifti
from ..data.dicom import DicomVolume, read_dicom_series
from ..data.dicomseg import STRUCTURES, write_dicom_seg
from ..data.volumes import MAX_VOXELS
from ..errors import DataError, OutputExistsError
from ..formats import write_json
from ..fsutil import check_output
from ..version import __version__
from ..nn.base import SegmentationModel
from ..nn.shipped import is_shipped, model_card, sha256_of
from .predict import Prediction, SliceRuntime, predict_oriented, report_line, result_report, write_like
from .quality import ReviewRule


def model_identity(source: str | Path, model: SegmentationModel | SliceRuntime) -> tuple[str, str, str | None]:
    """(name, version, structure) a DICOM SEG records for the model loaded from ``source``: a
    shipped model's card (version = its weights' sha256, 12 hex digits), or a checkpoint file or
    run folder (its name, its weights' sha256, a structure named in its config's name, if any)."""
    path = Path(source)
    if not path.exists() and is_shipped(str(source)):
        card = model_card(str(source))
        return card["name"], card["sha256"][:12], card["structure"]
    weights = path / "checkpoints" / "best.safetensors" if path.is_dir() else path
    version = sha256_of(weights)[:12] if weights.is_file() else ""
    structure = next((s for s in STRUCTURES if s in model.config.name), None)
    return (path.name if path.is_dir() else path.stem), version, structure


def dicom_targets(output: Path, ensemble: int, review: bool) -> list[Path]:
    """The files predict writes for DICOM input: the mask (``.dcm`` SEG or NIfTI), then with
    ``ensemble > 1`` ``{stem}_prob`` and ``{stem}_std`` NIfTI, then with ``review`` ``{stem}.json``."""
    name = output.name
    if name.lower().endswith(".dcm"):
        stem, suffix = name[:-4], ".nii.gz"
    elif strip_nifti(name) is not None:
        stem = strip_nifti(name)
        suffix = name[len(stem):]
    else:
        raise DataError(f"output {output} must end in .dcm (DICOM SEG) or .nii.gz / .nii (NIfTI)")
    targets = [output]
    if ensemble > 1:
        targets += [output.with_name(f"{stem}_prob{suffix}"), output.with_name(f"{stem}_std{suffix}")]
    if review:
        targets.append(output.with_name(f"{stem}.json"))
    return targets


def segment_dicom(model: SegmentationModel | SliceRuntime, source: str | Path, series: str | None = None,
                  ensemble: int = 1, seed: int = 0, *, max_voxels: int = MAX_VOXELS) -> tuple[DicomVolume, Prediction]:
    """Read one DICOM series (:func:`mednca.data.dicom.read_dicom_series`, at most ``max_voxels``)
    and segment it on its own grid (:func:`mednca.pipeline.predict.predict_oriented`); nothing
    is written."""
    dicom = read_dicom_series(source, series, max_voxels=max_voxels)
    return dicom, predict_oriented(model, dicom.data, dicom.affine, ensemble, seed)


def predict_dicom(model: SegmentationModel | SliceRuntime, source: str | Path, output: str | Path, *,
                  series: str | None = None, ensemble: int = 1, seed: int = 0, overwrite: bool = False,
                  review: ReviewRule | None = None, model_name: str = "model", model_version: str = "",
                  structure: str | None = None, log: Callable[[str], None] | None = None) -> list[Path]:
    """Segment one DICOM series and write the result (see the module docs).

    Args:
        model: A MedNCA, UNet baseline or runtime (as :func:`mednca.pipeline.predict.predict_file`).
        source: A folder holding the series, a ``.zip`` of it, or one DICOM file.
        output: ``.dcm`` for a DICOM SEG, ``.nii.gz`` / ``.nii`` for NIfTI.
        series: SeriesInstanceUID, when ``source`` holds several image series.
        ensemble, seed, overwrite, review, log: As for ``predict_file``.
        model_name, model_version, structure: Written into the SEG (algorithm and segment codes).

    Returns:
        The written paths.
    """
    output = Path(output)
    if output.exists() and output.resolve() == Path(source).resolve():
        raise OutputExistsError(f"{output} is the input; write the result to another file")
    targets = dicom_targets(output, ensemble, review is not None)
    for t in targets:
        check_output(t, overwrite)
    dicom, pred = segment_dicom(model, source, series, ensemble, seed)
    volume = dicom.as_volume()
    mask = pred.mask
    if output.name.lower().endswith(".dcm"):
        write_dicom_seg(mask, dicom, output, structure=structure, model_name=model_name,
                        model_version=model_version, software_version=__version__)
    else:
        write_like(mask, volume, output)
    if ensemble > 1:
        write_like(pred.probability, volume, targets[1])
        write_like(pred.std, volume, targets[2])
    if review is not None:
        report = {"input": str(source), "series": dicom.series_uid, "mask": str(output),
                  **result_report(pred, mask, volume, review, ensemble, seed)}
        write_json(targets[-1], report)
        if log is not None:
            log(report_line(Path(source).name, report))
    return targets
