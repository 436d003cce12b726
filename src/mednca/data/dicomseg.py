"""Write a binary mask as a DICOM Segmentation (highdicom) that references its source series.

The SEG holds one segment with its anatomical code (SNOMED CT), the algorithm that made it
(mednca, the model's name and version) and one frame per source image, each frame carrying the
geometry of the image it lies on, so viewers and PACS overlay it on the right slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError, MissingDependencyError
from ..fsutil import atomic_path
from .dicom import INSTALL, DicomVolume

#: Structures with a SNOMED CT code (pydicom's code dictionary keyword); others are written as 'Tissue'.
STRUCTURES = {"hippocampus": "Hippocampus", "prostate": "Prostate"}


def structure_code(structure: str | None):
    """(category, type) codes of a structure name such as ``"hippocampus"`` (generic tissue for
    None or a name without a code)."""
    from pydicom.sr.codedict import codes

    keyword = STRUCTURES.get((structure or "").lower())
    if keyword is None:
        return codes.SCT.Tissue, codes.SCT.Tissue
    return codes.SCT.AnatomicalStructure, getattr(codes.SCT, keyword)


def write_dicom_seg(mask: np.ndarray, source: DicomVolume, path: str | Path, *, structure: str | None,
                    model_name: str, model_version: str, software_version: str) -> Path:
    """Write ``mask`` as a binary DICOM SEG over ``source``'s images (atomically).

    Args:
        mask: (X, Y, Z) binary mask on ``source``'s grid (as :attr:`DicomVolume.data`).
        source: The series the mask was computed from.
        path: Output ``.dcm`` file.
        structure: What was segmented (e.g. ``"hippocampus"``; see :data:`STRUCTURES`).
        model_name, model_version: The model, written as the segment's algorithm identification.
        software_version: mednca's version.

    Raises:
        DataError: The source series lacks what a SEG must copy from it (e.g. study attributes).
        MissingDependencyError: highdicom is not installed.
    """
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as exc:
        raise MissingDependencyError(f"DICOM SEG output needs highdicom: {INSTALL}") from exc
    if mask.shape != source.data.shape:
        raise DataError(f"mask shape {mask.shape} does not match the series' {source.data.shape}")
    category, kind = structure_code(structure)
    algorithm = hd.AlgorithmIdentificationSequence(name="mednca", family=codes.cid7162.ArtificialIntelligence,
                                                   version=software_version,
                                                   parameters={"model": model_name, "model_version": model_version})
    segment = hd.seg.SegmentDescription(segment_number=1, segment_label=structure or "foreground",
                                        segmented_property_category=category, segmented_property_type=kind,
                                        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                        algorithm_identification=algorithm, tracking_uid=hd.UID(),
                                        tracking_id=f"mednca {model_name}")
    frames = np.ascontiguousarray((mask > 0).astype(np.uint8).transpose(2, 1, 0))  # (images, rows, columns)
    try:
        seg = hd.seg.Segmentation(
            source_images=source.datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=_series_number(source),
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="mednca", manufacturer_model_name=model_name,
            software_versions=software_version, device_serial_number="none", series_description=f"mednca {model_name}",
            omit_empty_frames=False)
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise DataError(f"cannot write a DICOM SEG for series {source.series_uid} ({exc}); "
                        "write the mask as NIfTI (-o mask.nii.gz) instead") from exc
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp), enforce_file_format=True)
    return path


def _series_number(source: DicomVolume) -> int:
    """A series number beside the source's (its number + 1000, or 1000)."""
    try:
        return int(source.datasets[0].SeriesNumber) + 1000
    except (AttributeError, TypeError, ValueError):
        return 1000
