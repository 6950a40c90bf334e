"""Background work: the bounded generation queue (FIFO, worker threads); install jobs live in ``installs``.

Generation is CPU-bound in ncnn, which already uses every core, so it runs in worker
threads (one by default) off the event loop. A full queue raises ``QueueFull`` (HTTP 429).
A cancelled job is removed if still queued, or stopped at its next sampling step. On shutdown
(``shutdown``, the first SIGTERM/SIGINT) every queued job fails with ``ShuttingDown`` at once and
the running one stops at its next step.
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

from localai_sd.errors import Cancelled, QueueFull, ShuttingDown
from localai_sd.models import ModelConfig
from localai_sd.pipeline.pipeline import GeneratedImage, StepEvent
from localai_sd.pipeline.request import GenerationRequest
from localai_sd.server.installs import InstallJobs, InstallStatus, human_size

__all__ = ["GenerationJob", "GenerationQueue", "InstallJobs", "InstallStatus", "human_size"]

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
#: Finished generation jobs kept for ``GET /v1/images/jobs``.
KEEP_FINISHED_JOBS = 32


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

    def shutdown(self) -> None:
        """Refuse new jobs, fail every queued job with ShuttingDown now, stop running ones at their next step."""
        with self._cond:
            self._stopping = True
            waiting, running = list(self._waiting), list(self._running)
            self._waiting.clear()
            for job in waiting:
                job.cancel_event.set()
                self._finish(
                    job, CANCELLED, ShuttingDown("the server is shutting down; the queued job was cancelled")
                )
            self._cond.notify_all()
        for job in running:
            job.cancel_event.set()

    def stop(self) -> None:
        """Shut down and wait for the workers (a running job stops at its next step)."""
        self.shutdown()
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
                stopped = ShuttingDown("the server is shutting down; the running job was stopped")
                self._finish(job, CANCELLED, stopped if self._stopping else exc)
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
