"""The ``mednca serve`` web app (FastAPI): the page, its static files, and the HTTP API it uses.

API (docs/web.md): ``GET /api/models``; ``POST /api/jobs`` (multipart ``file``, ``model``) ->
``{"id"}``; ``GET /api/jobs/{id}`` -> status, queue position, progress, result; ``GET
/api/jobs/{id}/{mask,uncertainty,image,seg,report}`` -> the files. Everything the page needs is
served from the package: the page makes no request to another host. Requests from other origins
are refused, uploads above the size limit too, and a bad scan gets the CLI's one-line message.
Needs ``mednca[web]`` (FastAPI, uvicorn, python-multipart); the CLI imports it only for ``serve``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .jobs import Job, JobQueue
from .models import ServedModel
from .segment import FILES, segment_upload, upload_suffix

#: Where the page, its script, style sheet and the vendored NiiVue live.
STATIC = Path(str(resources.files("mednca") / "web" / "static"))
CHUNK = 1 << 20


#: Host names the app answers to by default (anything else, e.g. a DNS-rebinding site's name, is refused).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


#: Largest scan ``mednca serve`` segments by default, in voxels: 512³ (0.5 GiB as float32).
SERVE_MAX_VOXELS = 512 ** 3


def create_app(models: dict[str, ServedModel], *, max_upload_mb: float = 512, keep_minutes: float = 60,
               seed: int = 0, root: Path | None = None, hosts: tuple[str, ...] | None = LOCAL_HOSTS,
               max_voxels: int = SERVE_MAX_VOXELS):
    """The app serving ``models`` (see :func:`mednca.web.models.load_served`).

    Args:
        hosts: Host names (the Host header, without port) the app answers to; None for any
            (when it listens on every interface).
        max_upload_mb: Largest upload accepted, in MB (10^6 bytes).
        max_voxels: Largest scan segmented, in voxels (a small compressed upload can describe a
            huge volume): a larger one fails its job with a one-line message before it is read.
        keep_minutes: How long a finished job's files are kept.
        seed: Seed of the fire masks of every job (masks equal ``mednca predict --seed``'s).
        root: Folder for job files (default: a temporary folder, deleted when the app stops).
    """
    def run(job: Job) -> dict:
        def stage(text: str, fraction: float) -> None:
            job.stage, job.progress = text, fraction

        return segment_upload(models[job.model], job.upload, job.folder, seed, stage, max_voxels=max_voxels)

    jobs = JobQueue(run, keep_minutes, root)
    limit = int(max_upload_mb * 1e6)

    @asynccontextmanager
    async def lifespan(app):
        yield
        jobs.close()

    app = FastAPI(title="mednca", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.jobs = jobs

    app.middleware("http")(_guard(hosts, limit, max_upload_mb))

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/niivue.umd.js", include_in_schema=False)
    def viewer_script():
        """The vendored NiiVue build, stored gzip-compressed in the package and sent as it is."""
        return FileResponse(STATIC / "niivue.umd.js.gz", media_type="text/javascript",
                            headers={"Content-Encoding": "gzip"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/models")
    def list_models() -> list[dict]:
        return [m.summary() for m in models.values()]

    @app.post("/api/jobs")
    async def submit(file: UploadFile = File(...), model: str = Form(...)) -> dict:
        if model not in models:
            raise HTTPException(400, f"unknown model {model!r}; choose one of: {', '.join(models)}")
        suffix = upload_suffix(file.filename or "")
        if suffix is None:
            raise HTTPException(400, "upload a NIfTI scan (.nii or .nii.gz) or a .zip of one DICOM series")
        job = jobs.new_job(model, _display_name(file.filename or ""), suffix)
        try:
            saved = await _save(file, job.upload, limit)
        except OSError as exc:
            jobs.discard(job)
            raise HTTPException(507, f"the upload could not be stored on the server ({exc.strerror})") from exc
        if not saved:
            jobs.discard(job)
            raise HTTPException(413, _too_large(max_upload_mb))
        jobs.submit(job)
        return {"id": job.id}

    def find(job_id: str) -> Job:
        job = jobs.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job (finished jobs are deleted after a while)")
        return job

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str) -> dict:
        return jobs.status(find(job_id))

    @app.get("/api/jobs/{job_id}/{kind}")
    def job_file(job_id: str, kind: str):
        job = find(job_id)
        if kind not in FILES or job.status != "done":
            raise HTTPException(404, f"no {kind} for this job" if job.status == "done" else "the job is not done")
        path = job.upload if kind == "image" and not job.report.get("dicom") else job.folder / FILES[kind]
        if not path.is_file():
            raise HTTPException(404, f"no {kind} for this job (a DICOM SEG needs DICOM input)")
        stem = Path(job.filename).name.split(".")[0] or "scan"
        name = f"{stem}_{kind}{''.join(Path(path.name).suffixes)}"
        return FileResponse(path, filename=name)

    return app


def _guard(hosts: tuple[str, ...] | None, limit: int, max_upload_mb: float):
    """The app's middleware: before any body is read, refuse other origins, host names other than
    ``hosts`` and uploads without a size or above ``limit`` bytes."""
    names = None if hosts is None else {h.strip("[]") for h in hosts}

    async def guard(request: Request, call_next):
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
            return JSONResponse({"detail": "requests from other web sites are not allowed"}, status_code=403)
        if names is not None and request.url.hostname not in names:
            return JSONResponse({"detail": f"this app answers to {', '.join(hosts)} only"}, status_code=403)
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return JSONResponse({"detail": "uploads must state their size (Content-Length)"}, status_code=411)
            if int(length) > limit + CHUNK:  # the form's other fields and boundaries take a little
                return JSONResponse({"detail": _too_large(max_upload_mb)}, status_code=413)
        return await call_next(request)

    return guard


def _too_large(max_upload_mb: float) -> str:
    return f"the file is larger than the limit of {max_upload_mb:g} MB (mednca serve --max-upload-mb)"


def _display_name(filename: str) -> str:
    """The client's file name for display: its last path part, printable, at most 100 characters."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:100] or "scan"


async def _save(upload, path: Path, limit: int) -> bool:
    """Copy an upload to ``path`` in chunks; False (and nothing kept) once it exceeds ``limit`` bytes."""
    size = 0
    with open(path, "wb") as out:
        while chunk := await upload.read(CHUNK):
            size += len(chunk)
            if size > limit:
                break
            out.write(chunk)
    if size > limit:
        path.unlink(missing_ok=True)
        return False
    return True
