"""Small file-system helpers: atomic writes, refusing to clobber outputs, and one-line errors for
outputs that cannot be written."""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputError, OutputExistsError

#: OS errors that mean "this output cannot be written here" (the user can fix them).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.ENOENT}


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """The one-line error for an OS error while writing ``path``."""
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    A crash while writing leaves the old file (if any) untouched and no partial file behind.
    An OS error of :data:`WRITE_ERRNOS` (full disk, read-only place, ...) becomes an
    :class:`OutputError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
        os.chmod(path, 0o666 & ~_umask())  # mkstemp (and some writers) make 0600 files
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise output_error(path, exc) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable(path: str | Path) -> Path:
    """Raise :class:`OutputError` unless a file can be created at ``path``: checked before any
    work, so a long computation never ends in an unwritable output.

    Refused: ``path`` is a folder; a parent of it is a file; the nearest existing folder is not
    writable (or on a read-only file system).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or _read_only(parent):
        raise OutputError(f"cannot write {path}: {parent} is not writable")
    return path


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Return ``path`` if it may be written: refuse an existing file unless ``overwrite``, and a
    place where it cannot be written (:func:`check_writable`)."""
    path = Path(path)
    if path.exists() and not path.is_dir() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    return check_writable(path)
