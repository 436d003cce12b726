"""Read one DICOM image series (a folder, a ``.zip`` or a single file) as a 3D volume.

The volume and its affine come from the DICOM geometry alone: ImagePositionPatient,
ImageOrientationPatient and PixelSpacing, slices sorted by their position along the slice
normal, DICOM's patient axes (LPS) turned into NIfTI's (RAS). Anything that would give a wrong
grid is refused with a one-line :class:`DataError` instead of being guessed: several series,
missing or duplicate slices, uneven spacing, non-parallel slices, gantry tilt, missing geometry,
a non-image object (a SEG, a structured report). Needs ``pip install "mednca[dicom]"``.
"""

from __future__ import annotations

import warnings
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import DataError, MissingDependencyError
from .volumes import MAX_VOXELS, Volume, check_voxels

#: Storage classes and modalities that hold no image to segment.
NON_IMAGE_MODALITIES = {"SEG": "segmentation", "SR": "structured report", "RTSTRUCT": "RT structure set",
                        "RTPLAN": "RT plan", "RTDOSE": "RT dose", "PR": "presentation state",
                        "KO": "key object selection", "REG": "registration", "DOC": "document"}
#: The DICOMDIR index file's storage class.
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
#: Largest total size of a ``.zip`` input's members, in bytes (refused before anything is unpacked).
MAX_ZIP_BYTES = 4 * MAX_VOXELS
#: Tolerance on slice gaps and positions: a share of the slice spacing, plus mm (positions are
#: often stored rounded to 0.01 mm).
GEOMETRY_TOLERANCE, GEOMETRY_TOLERANCE_MM = 0.02, 0.02
#: LPS (DICOM) -> RAS (NIfTI).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
INSTALL = 'pip install "mednca[dicom]"'


@dataclass
class DicomVolume:
    """One DICOM series as a volume.

    Attributes:
        data: (X, Y, Z) float32 image in modality units (RescaleSlope/Intercept applied): X the
            columns, Y the rows of each image, Z the images in order of position along the normal.
        affine: (4, 4) voxel-to-world matrix in mm, RAS (as NIfTI).
        datasets: The series' pydicom datasets, in the order of ``data``'s Z axis.
        series_uid: SeriesInstanceUID.
        description: SeriesDescription ('' if none).
        source: The folder, ``.zip`` or file it was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    datasets: list
    series_uid: str
    description: str
    source: Path

    def as_volume(self) -> Volume:
        """The volume with a NIfTI header of its geometry (mm), to write masks as NIfTI."""
        import nibabel as nib

        header = nib.Nifti1Header()
        header.set_xyzt_units("mm")
        return Volume(self.data, self.affine, header, self.source)


def require_pydicom():
    """The ``pydicom`` module, or :class:`MissingDependencyError` naming the extra to install."""
    try:
        import pydicom
    except ImportError as exc:
        raise MissingDependencyError(f"DICOM needs pydicom and highdicom: {INSTALL}") from exc
    return pydicom


def _has_dicm(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_input(path: str | Path) -> bool:
    """Whether ``path`` is DICOM input for predict: a ``.zip``, a ``.dcm`` file or a file with the
    DICOM preamble, or a folder without NIfTI files that holds such files (at any depth)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in (".zip", ".dcm") or _has_dicm(path)
    if not path.is_dir() or any(path.glob("*.nii")) or any(path.glob("*.nii.gz")) or (path / "imagesTr").is_dir():
        return False
    for i, f in enumerate(p for p in path.rglob("*") if p.is_file()):
        if f.suffix.lower() == ".dcm" or f.name == "DICOMDIR" or _has_dicm(f):
            return True
        if i >= 200:  # a folder of something else
            return False
    return False


def _members(source: Path) -> Iterator[tuple[str, Callable]]:
    """(name, opener) of every file of a folder (any depth), a ``.zip`` or a single file."""
    if source.is_dir():
        for p in sorted(q for q in source.rglob("*") if q.is_file()):
            yield str(p.relative_to(source)), (lambda p=p: open(p, "rb"))
    elif source.suffix.lower() == ".zip":
        try:  # left open: the openers read members again (closed with the last of them)
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"cannot read {source} as a .zip ({exc})") from exc
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
            raise DataError(f"{source} unpacks to more than {MAX_ZIP_BYTES >> 30} GiB; unpack it and give the folder")
        for info in infos:
            yield f"{source.name}:{info.filename}", (lambda info=info: archive.open(info))
    elif source.is_file():
        yield source.name, (lambda: open(source, "rb"))
    else:
        raise DataError(f"input {source} does not exist")


#: What reading a member of a damaged, encrypted or unusual ``.zip`` raises.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, NotImplementedError, zlib.error, OSError, EOFError)


def _read(name: str, opener: Callable, headers_only: bool):
    """A file's dataset, or None if it is not DICOM. Files without the preamble and meta header
    (older DICOM) are read too when they parse to an object with a SOPClassUID.

    Raises:
        DataError: The file (e.g. a zip member) cannot be read at all.
    """
    pydicom = require_pydicom()
    for force in (False, True):
        try:
            with opener() as f, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's notes on odd VRs and the like, per file
                ds = pydicom.dcmread(f, stop_before_pixels=headers_only, force=force)
        except ZIP_ERRORS as exc:
            raise DataError(f"cannot read {name} ({type(exc).__name__}: {exc}); unpack it and give the folder") from exc
        except Exception:  # noqa: BLE001 - not DICOM (pydicom raises many types for other files)
            continue
        if not force or "SOPClassUID" in ds:
            return ds
    return None


def _series_of(source: Path) -> dict[str, list[tuple[str, Callable, object]]]:
    """The DICOM files of ``source`` grouped by SeriesInstanceUID: (name, opener, header)."""
    series: dict[str, list] = defaultdict(list)
    for name, opener in _members(source):
        ds = _read(name, opener, headers_only=True)
        if ds is None or str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")) == MEDIA_DIRECTORY:
            continue  # not DICOM (a README, a thumbnail) or a DICOMDIR index
        series[str(getattr(ds, "SeriesInstanceUID", "(no SeriesInstanceUID)"))].append((name, opener, ds))
    if not series:
        raise DataError(f"{source} holds no DICOM files")
    return series


def _kind(header) -> str | None:
    """What a non-image object is ('segmentation', ...), None for an image."""
    modality = str(getattr(header, "Modality", ""))
    if modality in NON_IMAGE_MODALITIES:
        return NON_IMAGE_MODALITIES[modality]
    return None if "Rows" in header else "object without pixel data"


def _describe(uid: str, files: list) -> str:
    h = files[0][2]
    return f"{uid} ({getattr(h, 'Modality', '?')}, '{getattr(h, 'SeriesDescription', '')}', {len(files)} file(s))"


def _choose(source: Path, series: dict, series_uid: str | None) -> tuple[str, list]:
    """The series to read: ``series_uid``, else the only image series."""
    if series_uid is not None:
        if series_uid not in series:
            raise DataError(f"{source} has no series {series_uid}; it holds: "
                            + "; ".join(_describe(u, f) for u, f in series.items()))
        files = series[series_uid]
        kind = _kind(files[0][2])
        if kind:
            raise DataError(f"series {series_uid} is a DICOM {kind}, not an image series to segment")
        return series_uid, files
    images = {u: f for u, f in series.items() if _kind(f[0][2]) is None}
    if not images:
        kinds = sorted({_kind(f[0][2]) for f in series.values()})
        raise DataError(f"{source} holds no image series to segment, only non-image DICOM objects ({', '.join(kinds)})")
    if len(images) > 1:
        raise DataError(f"{source} holds {len(images)} image series; pick one with --series UID: "
                        + "; ".join(_describe(u, f) for u, f in images.items()))
    return next(iter(images.items()))


def read_dicom_series(path: str | Path, series_uid: str | None = None, *,
                      max_voxels: int = MAX_VOXELS) -> DicomVolume:
    """Read one DICOM image series as a volume on its acquisition grid (see the module docs).

    Args:
        path: A folder holding the series (files at any depth; other files are ignored), a
            ``.zip`` of one, or a single DICOM file (refused unless it is a whole series).
        series_uid: SeriesInstanceUID to read when ``path`` holds several image series.
        max_voxels: Refuse a series with more voxels, before its pixel data is read.

    Raises:
        DataError: No DICOM files, several image series and no ``series_uid``, a non-image
            object, missing geometry, missing or duplicate slices, uneven spacing, non-parallel
            slices, gantry tilt, undecodable pixel data.
        MissingDependencyError: pydicom is not installed, or compressed pixel data needs a decoder.
    """
    source = Path(path)
    require_pydicom()
    uid, files = _choose(source, _series_of(source), series_uid)
    headers = [h for _, _, h in files]
    order, affine = _geometry(headers, source)
    rows, columns = int(headers[0].Rows), int(headers[0].Columns)
    check_voxels(rows * columns * len(headers), f"{columns} x {rows} x {len(headers)}", source, max_voxels)
    datasets = [_read(files[i][0], files[i][1], headers_only=False) for i in order]
    data = np.stack([_pixels(ds, files[i][0]) for ds, i in zip(datasets, order)])  # (Z, rows, columns)
    return DicomVolume(np.ascontiguousarray(data.transpose(2, 1, 0)), affine, datasets, uid,
                       str(getattr(headers[0], "SeriesDescription", "")), source)


def _vector(header, keyword: str, n: int, name: str) -> np.ndarray:
    value = getattr(header, keyword, None)
    try:
        vector = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        vector = np.zeros(0)
    if vector.shape != (n,) or not np.isfinite(vector).all():
        raise DataError(f"{name} has no valid {keyword}, so the slice geometry is unknown; "
                        "mednca needs ImagePositionPatient, ImageOrientationPatient and PixelSpacing")
    return vector


def _geometry(headers: list, source: Path) -> tuple[list[int], np.ndarray]:
    """The slice order (by position along the normal) and the RAS affine of a series' images."""
    if any(int(getattr(h, "NumberOfFrames", 1) or 1) > 1 for h in headers):
        raise DataError(f"{source} is a multi-frame (enhanced) DICOM image; mednca reads one image per "
                        "file (convert it, e.g. with dcm2niix, and give the NIfTI)")
    if len(headers) < 2:
        raise DataError(f"{source} holds a single DICOM image; give the folder (or .zip) of the whole series")
    try:
        sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"some images of {source} have no valid Rows / Columns") from exc
    if len(sizes) > 1:
        raise DataError(f"the images of {source} differ in size; is it one series?")
    orient = [_vector(h, "ImageOrientationPatient", 6, source) for h in headers]
    if np.abs(np.asarray(orient) - orient[0]).max() > 1e-4:
        raise DataError(f"the images of {source} are not parallel (ImageOrientationPatient differs): "
                        "a localizer or a multi-plane series cannot be read as one volume")
    row, col = orient[0][:3], orient[0][3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise DataError(f"the ImageOrientationPatient of {source} is not two unit vectors at right angles")
    normal = np.cross(row, col)
    spacing = _vector(headers[0], "PixelSpacing", 2, source)  # (between rows, between columns)
    spacings = np.asarray([_vector(h, "PixelSpacing", 2, source) for h in headers])
    if spacing.min() <= 0 or np.abs(spacings - spacing).max() > 1e-4:
        raise DataError(f"the PixelSpacing of {source} is not positive or differs between images")
    positions = np.asarray([_vector(h, "ImagePositionPatient", 3, source) for h in headers])
    order = [int(i) for i in np.argsort(positions @ normal, kind="stable")]
    positions = positions[order]
    step = _slice_step(positions, normal, source)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = row * spacing[1], col * spacing[0], step, positions[0]
    return order, LPS_TO_RAS @ affine


def _slice_step(positions: np.ndarray, normal: np.ndarray, source: Path) -> np.ndarray:
    """The (3,) offset from one slice to the next (mm); refuse duplicates, gaps and tilt."""
    gaps = np.diff(positions @ normal)
    spacing = float(np.median(gaps))
    if gaps.min() < GEOMETRY_TOLERANCE * max(spacing, 1e-3):
        raise DataError(f"{source} has several images at the same position (several echoes, phases or "
                        "acquisitions in one series?); split them into separate series")
    tolerance = GEOMETRY_TOLERANCE * spacing + GEOMETRY_TOLERANCE_MM
    if np.abs(gaps - spacing).max() > tolerance:
        raise DataError(f"{source} has uneven slice spacing (gaps of {gaps.min():.3g} to {gaps.max():.3g} mm): "
                        "missing slices or a stack of several acquisitions")
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    offsets = positions - positions[0] - np.outer(np.arange(len(positions)), step)
    if np.abs(offsets).max() > tolerance or abs(step @ normal) < 0.999 * np.linalg.norm(step):
        raise DataError(f"the slices of {source} are not stacked along their normal (gantry tilt or a "
                        "sheared stack); resample the series first")
    return step


def _pixels(ds, name: str) -> np.ndarray:
    """One image's (rows, columns) float32 pixels in modality units."""
    from pydicom.pixels import apply_modality_lut

    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise DataError(f"{name} is a colour image; mednca segments greyscale scans")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for undecodable data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_compressed:
            raise MissingDependencyError(
                f"{name} is compressed ({syntax.name}) and no installed decoder reads it; install one, "
                "e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg") from exc
        raise DataError(f"cannot decode the pixel data of {name} ({type(exc).__name__}: {exc})") from exc
    data = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    if data.shape != (int(ds.Rows), int(ds.Columns)) or not np.isfinite(data).all():
        raise DataError(f"the pixel data of {name} does not match its Rows x Columns or is not finite")
    return data
