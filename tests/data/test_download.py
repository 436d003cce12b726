"""Offline tests of mednca.data.download against tiny fake archives and a local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from mednca.data.download import MSD_TASKS, download_task
from mednca.errors import DownloadError

TASK = "Task99_Fake"
FILES = {
    f"{TASK}/imagesTr/a.nii.gz": b"image bytes " * 50,
    f"{TASK}/labelsTr/a.nii.gz": b"label bytes " * 50,
    f"{TASK}/dataset.json": b'{"name": "fake"}',
    f"{TASK}/imagesTr/._junk": b"apple double",
}


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def make_archive(path: Path, extra: dict[str, bytes] | None = None, links: dict[str, str] | None = None) -> Path:
    """Write a fake task tar: FILES plus ``extra`` files and ``links`` (name -> symlink target)."""
    with tarfile.open(path, "w") as tar:
        for name, data in {**FILES, **(extra or {})}.items():
            _add(tar, name, data)
        for name, target in (links or {}).items():
            _add(tar, name, type=tarfile.SYMTYPE, linkname=target)
    return path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    return make_archive(tmp_path / "src" / f"{TASK}.tar")


def assert_task_unpacked(folder: Path) -> None:
    assert folder.is_dir()
    assert (folder / "imagesTr" / "a.nii.gz").read_bytes() == FILES[f"{TASK}/imagesTr/a.nii.gz"]
    assert (folder / "labelsTr" / "a.nii.gz").read_bytes() == FILES[f"{TASK}/labelsTr/a.nii.gz"]
    assert (folder / "dataset.json").read_bytes() == FILES[f"{TASK}/dataset.json"]
    assert not (folder / "imagesTr" / "._junk").exists()
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".") or p.suffix == ".part"]
    assert leftovers == []


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_local_archive_is_copied_verified_and_unpacked(tmp_path: Path, archive: Path, as_url: bool) -> None:
    calls: list[tuple[int, int | None]] = []
    url = archive.as_uri() if as_url else str(archive)
    dest = tmp_path / "data"
    out = download_task(TASK, dest, url=url, md5=md5_of(archive), progress=lambda d, t: calls.append((d, t)))
    assert out == dest / TASK
    assert_task_unpacked(out)
    assert (dest / f"{TASK}.tar").read_bytes() == archive.read_bytes()
    size = archive.stat().st_size
    assert calls[0] == (0, size) and calls[-1] == (size, size)


def test_wrong_md5_raises_and_leaves_nothing(tmp_path: Path, archive: Path) -> None:
    dest = tmp_path / "data"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_task(TASK, dest, url=str(archive), md5="0" * 32)
    assert list(dest.iterdir()) == []
    assert archive.is_file()  # the source is never touched


def test_existing_task_needs_overwrite_and_reuses_verified_archive(tmp_path: Path, archive: Path) -> None:
    dest, md5 = tmp_path / "data", md5_of(archive)
    download_task(TASK, dest, url=str(archive), md5=md5)
    with pytest.raises(DownloadError, match="already exists.*overwrite"):
        download_task(TASK, dest, url=str(archive), md5=md5)
    (dest / TASK / "stale.txt").write_text("old")
    archive.unlink()  # the kept, verified archive in dest must be reused, not fetched again
    out = download_task(TASK, dest, url=str(archive), md5=md5, overwrite=True)
    assert_task_unpacked(out)
    assert not (out / "stale.txt").exists()


def test_unknown_task_without_url_lists_known_tasks(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unknown task") as info:
        download_task("Task42_Nope", tmp_path)
    assert all(name in str(info.value) for name in MSD_TASKS)
    assert list(tmp_path.iterdir()) == []


def test_registry_has_the_ten_msd_tasks() -> None:
    assert list(MSD_TASKS) == sorted(MSD_TASKS) and len(MSD_TASKS) == 10
    assert MSD_TASKS["Task04_Hippocampus"] == (
        "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task04_Hippocampus.tar",
        "9d24dba78a72977dbd1d2e110310f31b",
    )
    for name, (url, md5) in MSD_TASKS.items():
        assert url.endswith(f"/{name}.tar") and len(md5) == 32 and int(md5, 16) >= 0


@pytest.mark.parametrize(
    ("extra", "links"),
    [({"../evil": b"x"}, None), ({"/tmp/evil": b"x"}, None), (None, {f"{TASK}/evil": "../../outside"})],
    ids=["dotdot", "absolute", "symlink-out"],
)
def test_unsafe_members_are_rejected(tmp_path: Path, extra: dict | None, links: dict | None) -> None:
    bad = make_archive(tmp_path / f"{TASK}.tar", extra, links)
    dest = tmp_path / "a" / "b"
    with pytest.raises(DownloadError, match="unsafe member"):
        download_task(TASK, dest, url=str(bad))
    assert not (dest / TASK).exists() and not (tmp_path / "a" / "evil").exists()
    assert [p.name for p in dest.iterdir()] == [f"{TASK}.tar"]  # no unpacking folder left behind


def test_corrupt_archive_and_archive_without_task_folder(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar archive at all" * 100)
    with pytest.raises(DownloadError, match="not a readable tar"):
        download_task(TASK, tmp_path / "d1", url=str(junk))
    other = make_archive(tmp_path / "other.tar")
    with pytest.raises(DownloadError, match="no Task05_Other/imagesTr"):
        download_task("Task05_Other", tmp_path / "d2", url=str(other))
    assert not (tmp_path / "d2" / "Task05_Other").exists()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.payload``, honouring ``Range: bytes=N-`` unless ``server.ignore_range``."""

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        data, start = self.server.payload, 0  # type: ignore[attr-defined]
        ranged = self.headers.get("Range")
        self.server.ranges.append(ranged)  # type: ignore[attr-defined]
        if ranged and not self.server.ignore_range:  # type: ignore[attr-defined]
            start = int(ranged.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    """A local HTTP server on 127.0.0.1 in a thread, shut down after the test."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    httpd.payload, httpd.ranges, httpd.ignore_range = b"", [], False  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("ignore_range", [False, True], ids=["resume", "server-ignores-range"])
def test_http_download_resumes_from_part_file(tmp_path: Path, archive: Path, server, ignore_range: bool) -> None:
    data = archive.read_bytes()
    server.payload, server.ignore_range = data, ignore_range
    dest = tmp_path / "data"
    dest.mkdir()
    half = len(data) // 2
    # a resumed download must append; a restarted one must overwrite (so poison the ignored half)
    (dest / f"{TASK}.tar.part").write_bytes(b"\0" * half if ignore_range else data[:half])
    calls: list[tuple[int, int | None]] = []
    url = f"http://127.0.0.1:{server.server_address[1]}/files/{TASK}.tar"
    out = download_task(TASK, dest, url=url, md5=md5_of(archive), progress=lambda d, t: calls.append((d, t)))
    assert server.ranges == [f"bytes={half}-"]
    assert (dest / f"{TASK}.tar").read_bytes() == data
    assert calls[0] == ((0 if ignore_range else half), len(data)) and calls[-1] == (len(data), len(data))
    assert_task_unpacked(out)


def test_network_failure_suggests_local_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.socket() as sock:  # a port that was free a moment ago: the connection is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="no internet.*--url"):
        download_task(TASK, tmp_path, url=f"http://127.0.0.1:{port}/{TASK}.tar")
    assert not (tmp_path / TASK).exists()
