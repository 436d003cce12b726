"""Read NIfTI volumes and check them: 3D (or 4D with a chosen channel), finite, labels aligned."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .cases import Case


@dataclass
class Volume:
    """A 3D volume with the geometry of the file it came from.

    Attributes:
        data: (X, Y, Z) array (float32 for images, int64 for labels).
        affine: (4, 4) voxel-to-world matrix in mm.
        header: The NIfTI header, to write outputs with the same geometry.
        path: Source file.
    """

    data: np.ndarray
    affine: np.ndarray
    header: object
    path: Path

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(0)))


#: Most voxels (over all channels) of a NIfTI file mednca reads: 2^30, a 1024³ volume (4 GiB as
#: float32). A header claiming more is refused before any data is read or decompressed.
MAX_VOXELS = 1 << 30


def _load(path: Path, max_voxels: int = MAX_VOXELS):
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"file {path} does not exist")
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
        check_voxels(int(np.prod(shape, dtype=np.float64)), ' x '.join(map(str, shape)), path, max_voxels)
        data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"cannot read {path} as NIfTI ({type(exc).__name__}: {exc})") from exc
    check_affine(img.affine, path)
    return img, data


def check_voxels(n: int, shape: str, path: str | Path, max_voxels: int = MAX_VOXELS) -> None:
    """Raise :class:`DataError` if a volume of ``n`` voxels (``shape``, for the message) is
    above ``max_voxels``: mednca's own limit, or a lower one (``mednca serve --max-voxels``)."""
    if n > max_voxels:
        hint = "more than mednca reads" if max_voxels >= MAX_VOXELS else "more than this server accepts"
        raise DataError(f"{path} claims {shape} voxels, {hint} ({max_voxels:,})"
                        + ("; is the header right?" if max_voxels >= MAX_VOXELS else ""))


def check_affine(affine: np.ndarray, path: str | Path) -> None:
    """Raise :class:`DataError` unless ``affine`` is a finite, invertible voxel-to-world matrix:
    without one, voxel sizes (mm, ml) and the grid's placement are unknown."""
    affine = np.asarray(affine, dtype=np.float64)
    linear = affine[:3, :3] if affine.shape == (4, 4) else None
    if linear is None or not np.isfinite(affine).all() or abs(np.linalg.det(linear)) < 1e-12:
        raise DataError(f"{path} has no valid voxel-to-world matrix (its NIfTI affine is not finite or not "
                        "invertible), so its voxel size is unknown; fix the header's qform/sform")


def read_image(path: str | Path, channel: int | None = 0, *, max_voxels: int = MAX_VOXELS) -> Volume:
    """Read an image as a float32 3D volume.

    Args:
        path: NIfTI file.
        channel: For a 4D file, the index along the 4th axis to take (e.g. prostate T2 = 0).
        max_voxels: Refuse a file whose header claims more voxels (over all channels), before
            any data is read or decompressed.

    Raises:
        DataError: Unreadable file, not 3D/4D, channel out of range, or NaN/inf voxels.
    """
    path = Path(path)
    img, data = _load(path, max_voxels)
    if data.ndim == 4:
        ch = 0 if channel is None else channel
        if not 0 <= ch < data.shape[3]:
            raise DataError(f"{path} has {data.shape[3]} channel(s); channel {ch} does not exist")
        data = data[..., ch]
    elif data.ndim == 3:
        if channel not in (None, 0):
            raise DataError(f"{path} is a 3D image; channel {channel} does not exist")
    else:
        raise DataError(f"{path} is {data.ndim}D with shape {data.shape}; expected a 3D volume "
                        "(or 4D with modalities on the last axis)")
    data = np.asarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(f"{path} has {bad} NaN or infinite voxel(s)")
    return Volume(data, np.asarray(img.affine, dtype=np.float64), img.header, path)


def read_label(path: str | Path) -> Volume:
    """Read a label map as an int64 3D volume (a trailing singleton 4th axis is dropped)."""
    path = Path(path)
    img, data = _load(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"label {path} is {data.ndim}D with shape {data.shape}; expected 3D")
    data = np.asarray(data)
    if not np.isfinite(data).all():
        raise DataError(f"label {path} has NaN or infinite voxels")
    if np.issubdtype(data.dtype, np.floating) and not np.all(data == np.round(data)):
        raise DataError(f"label {path} has non-integer values; expected a label map")
    return Volume(data.astype(np.int64), np.asarray(img.affine, dtype=np.float64), img.header, path)


def axis_codes(affine: np.ndarray) -> str:
    """Voxel axis codes of an affine, e.g. ``"RAS"``: the world direction each array axis points to."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))


def file_axis_codes(path: str | Path) -> str | None:
    """:func:`axis_codes` of a NIfTI file from its header alone (None if it cannot be read)."""
    import nibabel as nib

    try:
        return axis_codes(nib.load(str(path)).affine)
    except Exception:  # noqa: BLE001 - an unreadable file is reported when its data is read
        return None


def reorient(data: np.ndarray, affine: np.ndarray, codes: str | None) -> np.ndarray:
    """``data`` (X, Y, Z) on the grid of ``affine``, with its axes permuted and flipped so that they
    point along ``codes`` (e.g. ``"RAS"``); no resampling. ``codes=None`` returns ``data``."""
    if codes is None:
        return data
    from nibabel import orientations as ornt

    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(tuple(codes)))
    return np.ascontiguousarray(ornt.apply_orientation(data, transform))


def restore_orientation(data: np.ndarray, affine: np.ndarray, codes: str | None) -> np.ndarray:
    """The inverse of :func:`reorient`: an array oriented as ``codes`` back on the grid of ``affine``."""
    if codes is None:
        return data
    from nibabel import orientations as ornt

    transform = ornt.ornt_transform(ornt.axcodes2ornt(tuple(codes)), ornt.io_orientation(affine))
    return np.ascontiguousarray(ornt.apply_orientation(data, transform))


def binarize(label: np.ndarray, value: int | None) -> np.ndarray:
    """Foreground mask (uint8): all labels > 0 merged (``value=None``) or only ``value``."""
    return (label > 0 if value is None else label == value).astype(np.uint8)


def check_pair(image: Volume, label: Volume, atol: float = 1e-3) -> None:
    """Raise :class:`DataError` if image and label differ in shape or affine."""
    if image.data.shape != label.data.shape:
        raise DataError(f"image {image.path.name} has shape {image.data.shape} but label "
                        f"{label.path.name} has shape {label.data.shape}")
    if not np.allclose(image.affine, label.affine, atol=atol):
        raise DataError(f"image {image.path.name} and label {label.path.name} have different affines "
                        "(they are not on the same voxel grid)")


def read_case(case: Case) -> tuple[Volume, Volume]:
    """Read and cross-check the image and label of a labelled case."""
    if case.label is None:
        raise DataError(f"case {case.case_id} has no label")
    image = read_image(case.image, case.channel)
    label = read_label(case.label)
    check_pair(image, label)
    return image, label
