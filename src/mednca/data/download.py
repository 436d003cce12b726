"""Fetch a Medical Segmentation Decathlon task: resumable download, md5 check, safe unpacking.

``download_task("Task04_Hippocampus", "data")`` leaves ``data/Task04_Hippocampus/`` (imagesTr/,
labelsTr/, dataset.json) and keeps the verified archive beside it, so a rerun with overwrite
unpacks again without downloading. ``url`` may also be a ``file://`` URL or a local path, which is
how offline machines and the tests use it. Standard library only.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from ..errors import DownloadError

Progress = Callable[[int, int | None], None]

_MIRROR = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
_CHUNK = 1 << 20
_TIMEOUT = 60.0
_JUNK = (".DS_Store", "__MACOSX")
_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # Python >= 3.11.4

# Mirror and md5 checksums as listed by MONAI's DecathlonDataset (monai/apps/datasets.py).
MSD_TASKS: dict[str, tuple[str, str]] = {
    name: (f"{_MIRROR}/{name}.tar", md5)
    for name, md5 in {
        "Task01_BrainTumour": "240a19d752f0d9e9101544901065d872",
        "Task02_Heart": "06ee59366e1e5124267b774dbd654057",
        "Task03_Liver": "a90ec6c4aa7f6a3d087205e23d4e6397",
        "Task04_Hippocampus": "9d24dba78a72977dbd1d2e110310f31b",
        "Task05_Prostate": "35138f08b1efaef89d7424d2bcc928db",
        "Task06_Lung": "8afd997733c7fc0432f71255ba4e52dc",
        "Task07_Pancreas": "4f7080cfca169fa8066d17ce6eb061e4",
        "Task08_HepaticVessel": "641d79e80ec66453921d997fbf12a29c",
        "Task09_Spleen": "410d4a301da4e5b2f6f86ec3ddba524e",
        "Task10_Colon": "bad7a188931dc2f6acf72b08eb6202d0",
    }.items()
}


def download_task(
    task: str,
    dest: str | Path,
    *,
    url: str | None = None,
    md5: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Download, verify and unpack one MSD task archive into ``dest``.

    Args:
        task: Task name such as ``"Task04_Hippocampus"``; any name is accepted when ``url`` is given.
        dest: Folder receiving the archive and the unpacked ``dest/<task>`` folder.
        url: http(s) URL, ``file://`` URL or local path of the archive, instead of the registry's.
        md5: Expected md5 of the archive, instead of the registry's (None and unknown: unchecked).
        overwrite: Replace an existing ``dest/<task>`` folder.
        progress: Called as ``progress(done_bytes, total_bytes_or_None)`` while data arrives.

    Returns:
        The unpacked task folder ``dest/<task>``.

    Raises:
        DownloadError: Unknown task, network failure, checksum mismatch, bad or unsafe archive, or
            an existing task folder without ``overwrite``.
    """
    source, expected = _resolve(task, url, md5)
    dest = Path(dest)
    target = dest / task
    if not overwrite and _occupied(target):
        raise DownloadError(f"{target} already exists; pass --overwrite to replace it")
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / _archive_name(source, task)
    local = _local_path(source)
    if local is not None and local.is_file() and local.resolve() == archive.resolve():
        _verify(archive, expected, delete=False)  # the user's own file: check it, never delete it
    elif not _is_verified(archive, expected):
        part = archive.with_name(archive.name + ".part")
        _fetch(source, local, part, progress)
        os.replace(part, archive)
        _verify(archive, expected, delete=True)
    _unpack(archive, task, dest)
    return target


def _resolve(task: str, url: str | None, md5: str | None) -> tuple[str, str | None]:
    """The archive source and expected md5 for ``task``, from the arguments or the registry."""
    if not task or task in (".", "..") or PurePosixPath(task).name != task or "\\" in task:
        raise DownloadError(f"invalid task name {task!r}; use a folder name such as Task04_Hippocampus")
    if url is None and task not in MSD_TASKS:
        raise DownloadError(f"unknown task {task!r}; known tasks: {', '.join(MSD_TASKS)} (or pass --url)")
    default_url, default_md5 = MSD_TASKS.get(task, (None, None))
    expected = md5 or default_md5
    return url or default_url, expected.lower() if expected else None


def _occupied(target: Path) -> bool:
    """Whether ``target`` exists and is not an empty folder (which is safe to replace)."""
    return target.exists() and not (target.is_dir() and not any(target.iterdir()))


def _archive_name(source: str, task: str) -> str:
    """The archive's file name: the last component of the URL or path, else ``<task>.tar``."""
    name = posixpath.basename(urllib.parse.urlparse(source).path) if "://" in source else Path(source).name
    return name or f"{task}.tar"


def _local_path(source: str) -> Path | None:
    """The local file behind a path or ``file://`` URL; None for http(s) URLs."""
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path))
    if "://" in source:
        raise DownloadError(f"unsupported URL {source}; use http(s)://, file:// or a local path")
    return Path(source)


def _fetch(source: str, local: Path | None, part: Path, progress: Progress | None) -> None:
    """Fill ``part`` with the complete archive, copying a local file or downloading (resuming)."""
    if local is not None:
        if not local.is_file():
            raise DownloadError(f"archive {local} does not exist; check the --url path")
        with open(local, "rb") as src:
            _stream(src, part, 0, local.stat().st_size, progress)
        return
    try:
        _download(source, part, progress)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"could not download {source} ({reason}); there may be no internet here: run again to "
            "resume, or pass --url with the path of a local copy of the archive"
        ) from exc


def _download(url: str, part: Path, progress: Progress | None) -> None:
    """Download ``url`` into ``part``, asking only for the missing bytes if ``part`` exists."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the .part is not shorter than the file: start over
            part.unlink()
            return _download(url, part, progress)
        raise
    with response:
        if have and response.status != 206:  # the server ignored the Range header: restart
            have = 0
        length = response.headers.get("Content-Length")
        _stream(response, part, have, have + int(length) if length else None, progress)


def _stream(src: BinaryIO, part: Path, offset: int, total: int | None, progress: Progress | None) -> None:
    """Append ``src`` to ``part`` from byte ``offset`` (0 truncates), reporting progress."""
    done = offset
    with open(part, "ab" if offset else "wb") as out:
        if progress is not None:
            progress(done, total)
        while chunk := src.read(_CHUNK):
            out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    if total is not None and done < total:
        raise DownloadError(f"download stopped at {done} of {total} bytes; run again to resume")


def _md5(path: Path) -> str:
    """The md5 hex digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_verified(archive: Path, expected: str | None) -> bool:
    """Whether ``archive`` is already there and matches a known checksum."""
    return expected is not None and archive.is_file() and _md5(archive) == expected


def _verify(archive: Path, expected: str | None, *, delete: bool) -> None:
    """Raise if ``archive``'s md5 is not ``expected`` (if ``delete``, remove the bad file first)."""
    if expected is None:
        return
    actual = _md5(archive)
    if actual != expected:
        if delete:
            archive.unlink()
        what = "deleted it; run again to download it again" if delete else "check the file or --md5"
        raise DownloadError(f"checksum mismatch for {archive.name}: md5 {actual}, expected {expected}; {what}")


def _members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The members to unpack, without macOS junk; raise on any member that could escape."""
    keep = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        link = member.linkname if member.issym() or member.islnk() else None
        if member.issym() and link is not None:
            link = posixpath.join(posixpath.dirname(member.name), link)
        if path.is_absolute() or ".." in path.parts or (link is not None and _escapes(link)):
            raise DownloadError(f"{archive.name} has an unsafe member {member.name!r}; refusing to unpack it")
        if path.name.startswith("._") or any(part in _JUNK for part in path.parts):
            continue
        keep.append(member)
    return keep


def _escapes(link: str) -> bool:
    """Whether a link target (relative to the archive root) points outside it."""
    norm = posixpath.normpath(link)
    return posixpath.isabs(link) or norm == ".." or norm.startswith("../")


def _unpack(archive: Path, task: str, dest: Path) -> None:
    """Unpack ``archive`` into a temporary folder in ``dest``, then move ``<task>`` into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", suffix=".unpacking", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = _members(tar, archive)
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(tmp, members=members, **safe)
        except _FILTER_ERROR as exc:
            raise DownloadError(f"{archive.name} has an unsafe member ({exc}); refusing to unpack it") from exc
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise DownloadError(f"{archive} is not a readable tar archive ({exc}); delete it and run again") from exc
        unpacked = tmp / task
        if not (unpacked / "imagesTr").is_dir():
            raise DownloadError(f"{archive.name} has no {task}/imagesTr folder; is it the archive of {task}?")
        target = dest / task
        if target.exists():
            os.replace(target, tmp / ".old")  # moved aside, deleted with tmp below
        os.replace(unpacked, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
