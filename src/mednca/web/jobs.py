"""Segmentation jobs of the web app: one worker thread runs them one at a time, in order of
arrival; each job owns a folder (named by its random id) under the app's temporary root, deleted
when its results are older than ``keep_minutes`` and, with the root, when the app stops."""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import MedNCAError
from ..formats import json_safe, one_line

#: The work of one job: (job) -> report dict; raises MedNCAError for a bad scan.
Runner = Callable[["Job"], dict]
#: Seconds a swept job's folder outlives its entry, so that a download which found the job just
#: before it was swept still finds its file (instead of an error half-way).
GRACE_S = 60.0


@dataclass
class Job:
    """One uploaded scan and what became of it.

    Attributes:
        id: 32 random hex digits (the folder's name and the API's key).
        model: Name of the model to run.
        filename: The client's file name, for display only (never used as a path).
        folder: The job's own folder; the upload is ``folder / upload_name``.
        upload_name: ``input.nii.gz``, ``input.nii`` or ``input.zip``.
        status: ``queued``, ``running``, ``done`` or ``failed``.
        stage, progress: What is being done and the fraction done (0-1).
        report: The result (``done``); error: the one-line message (``failed``).
        finished: time.time() when it ended (None before).
    """

    id: str
    model: str
    filename: str
    folder: Path
    upload_name: str
    status: str = "queued"
    stage: str = "waiting"
    progress: float = 0.0
    report: dict | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def upload(self) -> Path:
        return self.folder / self.upload_name


class JobQueue:
    """A FIFO of jobs with one worker thread (see the module docs).

    Args:
        runner: What a job does (see :data:`Runner`).
        keep_minutes: How long a finished job's files and status are kept.
        root: Where job folders go (default: a new temporary folder, removed by :meth:`close`).
    """

    def __init__(self, runner: Runner, keep_minutes: float = 60.0, root: Path | None = None) -> None:
        self.runner, self.keep_s = runner, keep_minutes * 60.0
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mednca-serve-"))
        self.jobs: dict[str, Job] = {}
        self._waiting: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._swept: list[tuple[float, Job]] = []  # (when, job) of swept jobs whose folders remain
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="mednca-jobs", daemon=True)
        self._worker.start()

    def new_job(self, model: str, filename: str, suffix: str) -> Job:
        """A job with its folder created; :meth:`submit` it once its upload is written."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir(parents=True)
        return Job(job_id, model, filename, folder, f"input{suffix}")

    def submit(self, job: Job) -> None:
        """Queue a job (its upload written); also drops expired jobs."""
        self.sweep()
        with self._lock:
            self.jobs[job.id] = job
        self._waiting.put(job.id)

    def position(self, job: Job) -> int:
        """How many queued or running jobs are ahead of a queued job (0 if it is not queued)."""
        if job.status != "queued":
            return 0
        with self._lock:
            return sum(1 for j in self.jobs.values() if j.status in ("queued", "running") and j.created < job.created)

    def status(self, job: Job) -> dict:
        """The job as ``GET /api/jobs/{id}`` returns it."""
        data = {"id": job.id, "model": job.model, "filename": job.filename, "status": job.status,
                "stage": job.stage, "progress": round(job.progress, 3), "queue_position": self.position(job)}
        if job.report is not None:
            data["result"] = json_safe(job.report)
        if job.error is not None:
            data["error"] = job.error
        return data

    def sweep(self, now: float | None = None) -> list[str]:
        """Forget the jobs that finished more than ``keep_minutes`` ago (their ids are returned)
        and delete the folders of jobs forgotten at least :data:`GRACE_S` seconds ago."""
        now = time.time() if now is None else now
        with self._lock:
            old = [j for j in self.jobs.values() if j.finished is not None and now - j.finished > self.keep_s]
            for job in old:
                del self.jobs[job.id]
            self._swept += [(now, job) for job in old]
            due = [job for when, job in self._swept if now - when >= GRACE_S]
            self._swept = [(when, job) for when, job in self._swept if now - when < GRACE_S]
        for job in due:
            shutil.rmtree(job.folder, ignore_errors=True)
        return [job.id for job in old]

    def discard(self, job: Job) -> None:
        """Forget a job that was never submitted (its upload was refused) and delete its folder."""
        shutil.rmtree(job.folder, ignore_errors=True)

    def _work(self) -> None:
        while True:
            try:
                job_id = self._waiting.get(timeout=30.0)
            except queue.Empty:
                self.sweep()
                continue
            if job_id is None or self._stopping:
                return
            job = self.jobs.get(job_id)
            if job is not None:
                self._run(job)

    def _run(self, job: Job) -> None:
        job.status, job.stage = "running", "starting"
        try:
            job.report = self.runner(job)
            job.stage, job.progress = "done", 1.0
            job.status = "done"
        except MedNCAError as exc:  # a bad scan: the CLI's one-line message, about the user's file
            self._fail(job, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: say so on the page, keep serving
            traceback.print_exc()  # the server's console keeps the traceback
            self._fail(job, f"internal error ({type(exc).__name__}: {exc}); please report it")
        job.finished = time.time()

    @staticmethod
    def _fail(job: Job, message: str) -> None:
        """End a job with ``message``, on one line and naming the user's file, not the server's paths."""
        message = message.replace(str(job.upload), job.filename).replace(str(job.folder), "")
        job.error = one_line(message)  # before the status: a poll never sees a failure without its message
        job.status = "failed"

    def close(self) -> None:
        """Stop the worker (after the running job; queued jobs are not run) and delete every job
        folder and the root."""
        self._stopping = True
        self._waiting.put(None)
        self._worker.join(timeout=60.0)
        shutil.rmtree(self.root, ignore_errors=True)
