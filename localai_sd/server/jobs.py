"""Background work: the bounded generation queue (FIFO, worker threads) and install jobs.

Generation is CPU-bound in ncnn, which already uses every core, so it runs in worker
threads (one by default) off the event loop. A full queue raises ``QueueFull`` (HTTP 429).
A cancelled job is removed if still queued, or stopped at its next sampling step.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from localai_sd.errors import Cancelled, QueueFull
from localai_sd.models import ModelConfig
from localai_sd.pipeline.pipeline import GeneratedImage, StepEvent
from localai_sd.pipeline.request import GenerationRequest

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
#: Finished generation jobs kept for ``GET /v1/images/jobs``.
KEEP_FINISHED_JOBS = 32
#: 1024-based units, as LocalAI's ``formatBytes``.
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


@dataclass
class GenerationJob:
    """One queued generation: its request, progress, cancel flag and result future."""

    config: ModelConfig
    request: GenerationRequest
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    #: Progress of the image being made: its index, and the last finished step.
    index: int = 0
    step: int = 0
    error: str | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    future: Future[list[GeneratedImage]] = field(default_factory=Future)

    @property
    def model(self) -> str:
        """The model's name."""
        return self.config.name

    def cancelled(self) -> bool:
        """True once the job was cancelled (the pipeline polls this between steps)."""
        return self.cancel_event.is_set()

    def on_step(self, event: StepEvent) -> None:
        """Record the pipeline's progress."""
        self.index, self.step = event.index, event.step

    def progress(self) -> float:
        """Percent done over all n images and steps, 0-100."""
        total = self.request.n * self.request.steps
        return round(100.0 * (self.index * self.request.steps + self.step) / total, 1) if total else 0.0

    def status(self, position: int | None = None) -> dict[str, Any]:
        """A JSON-ready view of the job."""
        return {
            "id": self.id,
            "model": self.model,
            "state": self.state,
            "queue_position": position,
            "n": self.request.n,
            "steps": self.request.steps,
            "size": self.request.size,
            "image": self.index,
            "step": self.step,
            "progress": self.progress(),
            "error": self.error,
        }


Runner = Callable[[GenerationJob], list[GeneratedImage]]


class GenerationQueue:
    """A bounded FIFO of generation jobs served by worker threads."""

    def __init__(self, runner: Runner, *, workers: int = 1, max_waiting: int = 16):
        """A queue whose ``workers`` threads call ``runner(job)``; at most ``max_waiting`` jobs wait."""
        self._runner = runner
        self._workers = max(1, workers)
        self._max_waiting = max(0, max_waiting)
        self._waiting: deque[GenerationJob] = deque()
        self._running: list[GenerationJob] = []
        self._finished: deque[GenerationJob] = deque(maxlen=KEEP_FINISHED_JOBS)
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self) -> None:
        """Start the worker threads."""
        with self._cond:
            self._stopping = False
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"localai-sd-generate-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Cancel every job and stop the workers (waiting for running jobs to reach a step)."""
        with self._cond:
            self._stopping = True
            jobs = list(self._waiting) + list(self._running)
            self._cond.notify_all()
        for job in jobs:
            self.cancel(job)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def submit(self, job: GenerationJob) -> None:
        """Queue ``job``, or raise ``QueueFull`` when ``max_waiting`` jobs already wait."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down; try again later")
            if len(self._waiting) >= self._max_waiting and not self._idle_worker():
                raise QueueFull(
                    f"the generation queue is full ({len(self._waiting)} waiting, limit {self._max_waiting}); "
                    "try again later"
                )
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: GenerationJob) -> None:
        """Cancel ``job``: a waiting job leaves the queue now; a running one stops at its next step."""
        job.cancel_event.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, CANCELLED, Cancelled("the generation was cancelled while queued"))

    def jobs(self) -> list[dict[str, Any]]:
        """Status of running, waiting and recently finished jobs."""
        with self._cond:
            running = [job.status() for job in self._running]
            waiting = [job.status(position) for position, job in enumerate(self._waiting, start=1)]
            finished = [job.status() for job in self._finished]
        return running + waiting + finished

    def busy(self) -> tuple[int, int]:
        """(running, waiting) job counts."""
        with self._cond:
            return len(self._running), len(self._waiting)

    def _idle_worker(self) -> bool:
        """True when a worker is free to take a job at once (called under the lock)."""
        return len(self._running) + len(self._waiting) < self._workers

    def _work(self) -> None:
        """Worker loop: take the oldest job, run it, settle its future."""
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.state = RUNNING
                self._running.append(job)
            self._run(job)

    def _run(self, job: GenerationJob) -> None:
        """Run one job and record its outcome."""
        try:
            if job.cancelled():
                raise Cancelled("the generation was cancelled before it started")
            images = self._runner(job)
        except Cancelled as exc:
            with self._cond:
                self._running.remove(job)
                self._finish(job, CANCELLED, exc)
        except BaseException as exc:
            with self._cond:
                self._running.remove(job)
                self._finish(job, FAILED, exc)
        else:
            with self._cond:
                self._running.remove(job)
                job.state = DONE
                self._finished.append(job)
            job.future.set_result(images)

    def _finish(self, job: GenerationJob, state: str, exc: BaseException) -> None:
        """Mark ``job`` ended with ``exc`` (called under the lock)."""
        job.state, job.error = state, str(exc) or type(exc).__name__
        self._finished.append(job)
        if not job.future.done():
            job.future.set_exception(exc)


def human_size(num_bytes: int | None) -> str:
    """Bytes as LocalAI's human string, 1024-based (``"1.7 GiB"``); ``""`` when unknown."""
    if num_bytes is None:
        return ""
    value, unit = float(num_bytes), BYTE_UNITS[0]
    for unit in BYTE_UNITS:
        if value < 1024 or unit == BYTE_UNITS[-1]:
            break
        value /= 1024
    return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"


@dataclass
class InstallStatus:
    """LocalAI's ``/models/jobs/{uuid}`` fields, with the error as text and sizes in bytes too."""

    uuid: str
    processed: bool = False
    message: str = "waiting"
    progress: float = 0.0
    file_name: str = ""
    current_bytes: int = 0
    total_bytes: int = 0
    error: str | None = None
    cancelled: bool = False
    deletion: bool = False
    gallery_model_name: str = ""
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    def as_json(self) -> dict[str, Any]:
        """The JSON body of the job status."""
        return {
            "uuid": self.uuid,
            "processed": self.processed,
            "message": self.message,
            "progress": self.progress,
            "file_name": self.file_name,
            "downloaded_size": human_size(self.current_bytes)
            if self.total_bytes or self.current_bytes
            else "",
            "file_size": human_size(self.total_bytes) if self.total_bytes else "",
            "downloaded_bytes": self.current_bytes,
            "file_size_bytes": self.total_bytes,
            "error": self.error,
            "cancelled": self.cancelled,
            "deletion": self.deletion,
            "gallery_model_name": self.gallery_model_name,
        }


InstallWork = Callable[[InstallStatus], str | None]


class InstallJobs:
    """Install jobs, each on its own thread so one install never waits behind another."""

    def __init__(self) -> None:
        """An empty job table."""
        self._jobs: dict[str, InstallStatus] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, work: InstallWork, *, name: str = "") -> InstallStatus:
        """Run ``work(status)`` on a new thread; it returns a final message or raises."""
        status = InstallStatus(uuid=str(uuid.uuid1()), gallery_model_name=name, message="processing")
        with self._lock:
            self._jobs[status.uuid] = status
        thread = threading.Thread(
            target=self._run, args=(work, status), name=f"localai-sd-install-{status.uuid}", daemon=True
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return status

    def get(self, job_id: str) -> InstallStatus | None:
        """The status of job ``job_id``, or None."""
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> dict[str, InstallStatus]:
        """Every job, by uuid."""
        with self._lock:
            return dict(self._jobs)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask every job to cancel and wait a little for their threads."""
        with self._lock:
            statuses, threads = list(self._jobs.values()), list(self._threads)
        for status in statuses:
            status.cancel_event.set()
        for thread in threads:
            thread.join(timeout)

    @staticmethod
    def _run(work: InstallWork, status: InstallStatus) -> None:
        """Run one install and record ``completed`` or the error text."""
        try:
            message = work(status)
        except Cancelled as exc:
            status.cancelled, status.error, status.message = True, str(exc), f"cancelled: {exc}"
        except Exception as exc:
            text = str(exc) or type(exc).__name__
            status.error, status.message = text, f"error: {text}"
        else:
            status.progress, status.message = 100.0, message or "completed"
        status.processed = True
