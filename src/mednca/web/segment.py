"""One uploaded scan through the pipeline: a NIfTI file or a ``.zip`` of one DICOM series in;
the mask, the uncertainty map, the scan as NIfTI (for the viewer), the DICOM SEG (DICOM input)
and a report written into the job's folder under fixed names."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..data.dicomseg import write_dicom_seg
from ..data.volumes import MAX_VOXELS, read_image
from ..errors import DataError
from ..formats import write_json
from ..pipeline.predict import predict_oriented, result_report, write_like
from ..pipeline.predict_dicom import segment_dicom
from ..version import __version__
from .models import ServedModel

#: Upload kinds by file-name ending: only these endings are accepted; the file is stored as
#: ``input`` + ending, never under the client's name.
KINDS = {".nii.gz": "nifti", ".nii": "nifti", ".zip": "dicom"}
#: Files a finished job holds, by the name the API serves them under.
FILES = {"mask": "mask.nii.gz", "uncertainty": "std.nii.gz", "image": "scan.nii.gz", "seg": "seg.dcm",
         "report": "report.json"}


def upload_suffix(filename: str) -> str | None:
    """The accepted ending of a client's file name (``".nii.gz"``, ``".nii"``, ``".zip"``) or None."""
    lower = filename.lower()
    return next((s for s in KINDS if lower.endswith(s)), None)


def segment_upload(served: ServedModel, upload: Path, folder: Path, seed: int = 0,
                   stage: Callable[[str, float], None] = lambda text, fraction: None, *,
                   max_voxels: int = MAX_VOXELS) -> dict:
    """Segment an uploaded scan and write the results into ``folder`` (names in :data:`FILES`).

    Args:
        served: The model and how to run it.
        upload: ``input.nii.gz`` / ``input.nii`` / ``input.zip`` in ``folder``.
        seed: Seed of the fire masks (the same mask as ``mednca predict ... --seed``).
        stage: Called with what is being done and the fraction done.
        max_voxels: A larger scan is refused before its voxels are read.

    Returns:
        The report (also written as ``report.json``): volume_ml, quality, review, reason, ...

    Raises:
        MedNCAError: The upload is not a readable scan (the CLI's message).
    """
    stage("reading the scan", 0.05)
    dicom = KINDS[upload_suffix(upload.name)] == "dicom"
    stage(f"segmenting ({served.ensemble} passes)", 0.2)
    if dicom:
        series, pred = segment_dicom(served.model, upload, None, served.ensemble, seed, max_voxels=max_voxels)
        volume = series.as_volume()
    else:
        volume = read_image(upload, served.model.config.channel, max_voxels=max_voxels)
        pred = predict_oriented(served.model, volume.data, volume.affine, served.ensemble, seed)
    stage("writing the results", 0.9)
    mask = pred.mask
    write_like(mask, volume, folder / FILES["mask"])
    write_like(pred.std, volume, folder / FILES["uncertainty"])
    report = {"model": served.name, "dicom": dicom, "seg": False}
    if dicom:
        write_like(volume.data, volume, folder / FILES["image"])
        try:
            write_dicom_seg(mask, series, folder / FILES["seg"], structure=served.structure, model_name=served.name,
                            model_version=served.version, software_version=__version__)
            report["seg"] = True
        except DataError as exc:  # the mask stands; only the SEG cannot be made from this series
            report["seg_error"] = str(exc).split("; write the mask as NIfTI")[0]
    report.update(result_report(pred, mask, volume, served.review, served.ensemble, seed))
    write_json(folder / FILES["report"], report)
    return report

