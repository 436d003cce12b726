"""The web app's HTTP API with FastAPI's test client: a job end to end, every bad input, the
size limit, the queue, clean-up, client file names never used as paths, other origins refused."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from mednca.pipeline.predict import predict_file  # noqa: E402
from mednca.web.app import create_app  # noqa: E402
from mednca.web.jobs import GRACE_S, JobQueue  # noqa: E402
from mednca.web.models import load_served  # noqa: E402

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def served():
    return load_served()  # the shipped models (hippocampus)


@pytest.fixture
def client(served, tmp_path):
    app = create_app(served, max_upload_mb=1, keep_minutes=60, root=tmp_path / "jobs", hosts=("testserver",))
    with TestClient(app) as c:
        yield c


def scan_bytes(path: Path, seed: int = 0) -> bytes:
    """A small hippocampus-like crop (24 x 32 x 20) written to ``path``; its bytes."""
    rng = np.random.default_rng(seed)
    data = rng.normal(60, 10, (24, 32, 20)).astype(np.float32)
    data[8:15, 10:22, 5:15] += 80
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path.read_bytes()


def wait(client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def test_models_are_listed(client):
    models = client.get("/api/models").json()
    assert [m["name"] for m in models] == ["hippocampus"]
    assert models[0]["ensemble"] == 8 and models[0]["review_threshold"] > 0


def test_a_job_end_to_end_gives_predicts_mask(client, tmp_path):
    content = scan_bytes(tmp_path / "crop.nii.gz")
    response = client.post("/api/jobs", files={"file": ("crop.nii.gz", content)}, data={"model": "hippocampus"})
    assert response.status_code == 200, response.text
    job = wait(client, response.json()["id"])
    assert job["status"] == "done", job
    result = job["result"]
    assert set(result) >= {"volume_ml", "quality", "review", "reason", "ensemble"} and result["ensemble"] == 8
    mask = client.get(f"/api/jobs/{job['id']}/mask")
    assert mask.status_code == 200 and 'filename="crop_mask.nii.gz"' in mask.headers["content-disposition"]
    (tmp_path / "served.nii.gz").write_bytes(mask.content)
    from mednca.nn.build import load_model

    predict_file(load_model("hippocampus"), tmp_path / "crop.nii.gz", tmp_path / "cli.nii.gz", ensemble=8, seed=0)
    served = np.asarray(nib.load(str(tmp_path / "served.nii.gz")).dataobj)
    np.testing.assert_array_equal(served, np.asarray(nib.load(str(tmp_path / "cli.nii.gz")).dataobj))
    for kind in ("uncertainty", "image", "report"):
        assert client.get(f"/api/jobs/{job['id']}/{kind}").status_code == 200
    assert client.get(f"/api/jobs/{job['id']}/seg").status_code == 404  # no DICOM SEG for NIfTI input


def test_a_dicom_zip_gives_a_seg(client, tmp_path, write_dicom_series):
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 100, (24, 32, 12))
    volume[8:15, 10:22, 3:9] += 200
    folder = write_dicom_series(tmp_path / "series", volume, np.diag([-1.0, -1.0, 1.5, 1.0]))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    response = client.post("/api/jobs", files={"file": ("study.zip", archive.getvalue())}, data={"model": "hippocampus"})
    job = wait(client, response.json()["id"])
    assert job["status"] == "done" and job["result"]["dicom"] is True and job["result"]["seg"] is True, job
    seg = client.get(f"/api/jobs/{job['id']}/seg")
    assert seg.status_code == 200 and seg.content[128:132] == b"DICM"
    image = client.get(f"/api/jobs/{job['id']}/image")
    assert image.status_code == 200 and image.content[:2] == b"\x1f\x8b"  # the scan as NIfTI (gzip)


@pytest.mark.parametrize("name, content, message", [
    ("crop.nii.gz", b"not a scan at all", "cannot read"),
    ("study.zip", b"PK\x03\x04 broken", "cannot read"),
])
def test_an_unreadable_upload_fails_with_the_clis_message(client, name, content, message):
    response = client.post("/api/jobs", files={"file": (name, content)}, data={"model": "hippocampus"})
    assert response.status_code == 200
    job = wait(client, response.json()["id"])
    assert job["status"] == "failed" and message in job["error"] and "Traceback" not in job["error"]
    assert client.get("/api/models").status_code == 200  # still serving


def test_scans_above_the_voxel_limit_fail_before_they_are_read(served, tmp_path, write_dicom_series):
    app = create_app(served, max_voxels=1000, root=tmp_path / "jobs", hosts=("testserver",))
    folder = write_dicom_series(tmp_path / "series", np.zeros((24, 32, 12), dtype=np.int64), np.eye(4))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    uploads = {"crop.nii.gz": scan_bytes(tmp_path / "crop.nii.gz"), "study.zip": archive.getvalue()}
    with TestClient(app) as client:
        for name, content in uploads.items():
            response = client.post("/api/jobs", files={"file": (name, content)}, data={"model": "hippocampus"})
            job = wait(client, response.json()["id"])
            assert job["status"] == "failed" and "more than this server accepts (1,000)" in job["error"], job
            assert name in job["error"] and "Traceback" not in job["error"]


def test_bad_requests_are_refused_with_a_message(client):
    files = {"file": ("scan.png", b"png")}
    response = client.post("/api/jobs", files=files, data={"model": "hippocampus"})
    assert response.status_code == 400 and ".nii or .nii.gz" in response.json()["detail"]
    response = client.post("/api/jobs", files={"file": ("a.nii.gz", b"x")}, data={"model": "nope"})
    assert response.status_code == 400 and "unknown model 'nope'" in response.json()["detail"]
    assert client.get("/api/jobs/0123").status_code == 404
    assert client.post("/api/jobs", data={"model": "hippocampus"}).status_code == 422


def test_uploads_above_the_limit_are_refused(client, tmp_path):
    big = b"\0" * 1_500_000  # the client's limit is 1 MB
    response = client.post("/api/jobs", files={"file": ("big.nii.gz", big)}, data={"model": "hippocampus"})
    assert response.status_code == 413 and "larger than the limit of 1 MB" in response.json()["detail"]
    assert not list((tmp_path / "jobs").glob("*/input*"))  # nothing kept


def test_client_file_names_are_never_paths(client, tmp_path):
    content = scan_bytes(tmp_path / "crop.nii.gz")
    response = client.post("/api/jobs", files={"file": ("../../escape.nii.gz", content)}, data={"model": "hippocampus"})
    job = wait(client, response.json()["id"])
    assert job["filename"] == "escape.nii.gz"
    stored = sorted(p.name for p in (tmp_path / "jobs" / job["id"]).iterdir())
    assert "input.nii.gz" in stored and not list(tmp_path.rglob("escape*"))


def test_other_origins_are_refused(client, tmp_path):
    content = scan_bytes(tmp_path / "crop.nii.gz")
    response = client.post("/api/jobs", files={"file": ("a.nii.gz", content)}, data={"model": "hippocampus"},
                           headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    response = client.get("/api/models", headers={"Origin": "http://evil.example"})
    assert response.status_code == 403 and "access-control-allow-origin" not in response.headers
    assert client.get("/api/models", headers={"Origin": "http://testserver"}).status_code == 200
    # DNS rebinding: another site's name pointed at this machine, same origin as far as the browser knows
    rebound = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
    assert client.get("/api/models", headers=rebound).status_code == 403


def test_uploads_without_a_size_are_refused(client):
    response = client.post("/api/jobs", content=iter([b"--x\r\n"]),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 411 and "Content-Length" in response.json()["detail"]


def test_jobs_wait_in_a_queue_and_old_results_are_deleted(tmp_path):
    release = threading.Event()
    ran = []

    def runner(job):
        release.wait(10)
        ran.append(job.id)
        return {"volume_ml": 1.0}

    jobs = JobQueue(runner, keep_minutes=1, root=tmp_path / "jobs")
    first, second = (jobs.new_job("m", "a.nii.gz", ".nii.gz") for _ in range(2))
    jobs.submit(first)
    jobs.submit(second)
    deadline = time.time() + 5
    while first.status != "running" and time.time() < deadline:
        time.sleep(0.01)
    assert jobs.status(second)["queue_position"] == 1 and second.status == "queued"
    release.set()
    while second.status != "done" and time.time() < deadline + 5:
        time.sleep(0.01)
    assert ran == [first.id, second.id]
    assert jobs.sweep(now=time.time()) == []  # kept for a minute
    swept = time.time() + 61
    assert sorted(jobs.sweep(now=swept)) == sorted([first.id, second.id])
    assert jobs.jobs == {} and first.folder.exists()  # a download that found the job still gets its file
    assert jobs.sweep(now=swept + GRACE_S) == [] and not first.folder.exists() and not second.folder.exists()
    jobs.close()
    assert not (tmp_path / "jobs").exists()  # everything goes when the app stops


def test_checkpoints_are_served_beside_the_shipped_models(tmp_path, train_tiny):
    from mednca.errors import MedNCAError

    _, run = train_tiny(tmp_path)
    served = load_served([str(run), "hippocampus"])
    assert list(served) == ["hippocampus", "run"]
    assert served["run"].review is None and served["run"].ensemble == 8 and len(served["run"].version) == 12
    import shutil

    shutil.copytree(run, tmp_path / "elsewhere" / "run")
    with pytest.raises(MedNCAError, match="two models are named 'run'"):
        load_served([str(run), str(tmp_path / "elsewhere" / "run")])
    with pytest.raises(MedNCAError):
        load_served([str(tmp_path / "missing.safetensors")])


def test_the_page_and_its_viewer_come_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/niivue.umd.js" in page.text and "not a medical device" in page.text
    script = client.get("/static/niivue.umd.js")  # stored gzip-compressed, decoded by the client
    assert script.status_code == 200 and script.headers["content-encoding"] == "gzip"
    assert script.text.startswith("(function(") and "Niivue" in script.text
    assert client.get("/static/app.js").status_code == 200
