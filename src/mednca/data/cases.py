"""Find the cases of a dataset folder: Medical Segmentation Decathlon or nnU-Net v2 raw layout.

MSD:     imagesTr/{case}.nii.gz (3D, or 4D with modalities last) + labelsTr/{case}.nii.gz
nnU-Net: imagesTr/{case}_{XXXX}.nii.gz (one file per channel XXXX) + labelsTr/{case}.nii.gz

Junk files (``._*`` macOS forks, ``.DS_Store``, any hidden file) are ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DataError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case: its id, the image file to read and the channel within it, and the label file.

    Attributes:
        case_id: File name without extension (and without nnU-Net's ``_XXXX`` channel suffix).
        image: Path of the image file holding the selected channel.
        channel: Channel to take from a 4D image (``None`` for a 3D file).
        label: Path of the label file, or ``None`` for an unlabelled case.
    """

    case_id: str
    image: Path
    channel: int | None
    label: Path | None


def strip_nifti(name: str) -> str | None:
    """``"a.nii.gz"`` -> ``"a"``; ``None`` for names that are not NIfTI files."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def is_junk(path: Path) -> bool:
    """Hidden files, macOS resource forks (``._*``) and ``.DS_Store``."""
    return path.name.startswith(".")


def nifti_files(folder: Path) -> dict[str, Path]:
    """Map stem -> path for the NIfTI files of ``folder`` (junk ignored)."""
    files = {}
    for path in sorted(folder.iterdir()):
        stem = strip_nifti(path.name)
        if stem is not None and not is_junk(path) and path.is_file():
            files[stem] = path
    return files


#: How image files named ``{case}_{XXXX}`` are read: decided from the folder, grouped as channels
#: of one case (nnU-Net), or each file a scan of its own.
CHANNEL_FILES = ("auto", "group", "separate")


def _group_channel_files(root: Path, image_dir: Path, image_files: dict[str, Path], labels: str | None,
                         mode: str, log: Callable[[str], None] | None) -> bool:
    """Whether the image files are nnU-Net channel files ``{case}_{XXXX}`` to group by case."""
    if mode not in CHANNEL_FILES:
        raise DataError(f"channel_files must be one of {', '.join(CHANNEL_FILES)}, got {mode!r}")
    suffixed = all(_NNUNET_CHANNEL.match(stem) for stem in image_files)
    if mode == "group" and not suffixed:
        odd = next(stem for stem in image_files if not _NNUNET_CHANNEL.match(stem))
        raise DataError(f"cannot group channel files: {odd} in {image_dir} does not end in _XXXX")
    if mode != "auto" or not suffixed:
        return mode == "group"
    if labels is not None and (root / labels).is_dir():
        # nnU-Net names labels by the case id without the channel suffix; MSD by the full stem.
        return not set(image_files) <= set(nifti_files(root / labels))
    declared = any(_declares_channels(folder / "dataset.json") for folder in (root, root.parent))
    if log:
        n_cases = len({_NNUNET_CHANNEL.match(stem)["case"] for stem in image_files})
        log(f"{len(image_files)} files named CASE_XXXX in {image_dir}: " + (
            f"read as the channels of {n_cases} case(s) (a dataset.json declares nnU-Net channel_names); "
            "--channel-files separate reads each file as a scan" if declared else
            "each read as a scan of its own (nothing declares nnU-Net channel files); "
            "--channel-files group reads them as channels of one case"))
    return declared


def _declares_channels(path: Path) -> bool:
    """A readable nnU-Net ``dataset.json`` with ``channel_names`` (v2) beside the images."""
    try:
        return isinstance(json.loads(path.read_text()).get("channel_names"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def find_cases(root: str | Path, channel: int = 0, *, images: str = "imagesTr",
               labels: str | None = "labelsTr", channel_files: str = "auto",
               log: Callable[[str], None] | None = None) -> list[Case]:
    """List the cases of an MSD or nnU-Net raw dataset folder, sorted by case id.

    Args:
        root: The task folder (holding ``imagesTr/`` and ``labelsTr/``), or directly a folder
            of images when ``labels`` is None.
        channel: Modality to use: the 4th-axis index of MSD 4D images, or the ``_XXXX`` file of
            nnU-Net data.
        images: Name of the image sub-folder.
        labels: Name of the label sub-folder, or ``None`` for images without labels.
        channel_files: ``"auto"``: names ending in ``_XXXX`` are channel files of one case only
            when the folder says so (label files named by the case id, or a ``dataset.json``
            here or one folder up declaring nnU-Net ``channel_names``); otherwise every file is
            a scan of its own, so no scan is ever dropped. ``"group"`` / ``"separate"`` decide.
        log: Where the decision goes when ``_XXXX`` names were seen.

    Raises:
        DataError: Missing folders, no cases, an image without a label, or a missing channel.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    image_dir = root / images if (root / images).is_dir() else None
    if image_dir is None:
        if labels is not None:
            raise DataError(f"{root} has no {images}/ folder; expected an MSD or nnU-Net task folder "
                            f"({images}/, {labels}/, dataset.json)")
        image_dir = root
    image_files = nifti_files(image_dir)
    if not image_files:
        raise DataError(f"no NIfTI images (.nii.gz/.nii) found in {image_dir}")

    nnunet = _group_channel_files(root, image_dir, image_files, labels, channel_files, log)
    cases: dict[str, tuple[Path, int | None]] = {}
    if nnunet:
        by_case: dict[str, dict[int, Path]] = {}
        for stem, path in image_files.items():
            m = _NNUNET_CHANNEL.match(stem)
            by_case.setdefault(m["case"], {})[int(m["channel"])] = path
        for case_id, channels in by_case.items():
            if channel not in channels:
                raise DataError(f"case {case_id} has no channel {channel:04d} file in {image_dir} "
                                f"(has {', '.join(f'{c:04d}' for c in sorted(channels))})")
            cases[case_id] = (channels[channel], None)
    else:
        cases = {stem: (path, channel) for stem, path in image_files.items()}

    label_files: dict[str, Path] = {}
    if labels is not None:
        label_dir = root / labels
        if not label_dir.is_dir():
            raise DataError(f"{root} has no {labels}/ folder with the label files")
        label_files = nifti_files(label_dir)
        missing = sorted(set(cases) - set(label_files))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(f"{len(missing)} image(s) without a label in {label_dir}: {shown}")
    return [Case(cid, path, ch, label_files.get(cid)) for cid, (path, ch) in sorted(cases.items())]
