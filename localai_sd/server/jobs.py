"""Background work: the bounded generation queue (FIFO, worker threads); install jobs live in ``installs``.

Generation is CPU-bound in ncnn, which already uses every core, so it runs in worker
threads (one by default) off the event loop. A full queue raises ``QueueFull`` (HTTP 429).
A cancelled job is removed if still queued, or stopped at its next sampling step. On shutdown
(``shutdown``, the first SIGTERM/SIGINT) every queued job fails with ``ShuttingDown`` at once and
the running one stops at its next step.

The queue is the local ``JobBackend`` (``localai_sd.jobs.backend``): each job keeps an ``EventLog``
of plain events (queued position, per-step progress and preview, done/error/cancelled) that the
routes, the SSE stream and OpenAI streaming read by cursor.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from localai_sd.errors import Cancelled, QueueFull, ShuttingDown
from localai_sd.jobs import events as ev
from localai_sd.jobs.backend import JobNotFound
from localai_sd.jobs.events import Record
from localai_sd.jobs.log import EventLog
from localai_sd.jobs.steps import step_listener
from localai_sd.models import ModelConfig
from localai_sd.pipeline.img2img import EditSpec
from localai_sd.pipeline.pipeline import GeneratedImage, StepCallback, StepEvent
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
    #: An img2img/inpainting job's input image, mask and strength; None for txt2img.
    edit: EditSpec | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    #: Progress of the image being made: its index, and the last finished step.
    index: int = 0
    step: int = 0
    error: str | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    future: Future[list[GeneratedImage]] = field(default_factory=Future)
    #: Global steps (1-based over all images) whose previews are kept (an OpenAI stream's partial images).
    keep_previews: frozenset[int] = frozenset()
    #: Whether each step publishes a preview PNG (needs the pipeline's ``denoised``).
    previews: bool = True
    log: EventLog = field(init=False)
    _listener: StepCallback | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        """An empty event log that keeps the asked previews."""
        self.log = EventLog(self.keep_previews)

    @property
    def model(self) -> str:
        """The model's name."""
        return self.config.name

    def cancelled(self) -> bool:
        """True once the job was cancelled (the pipeline polls this between steps)."""
        return self.cancel_event.is_set()

    def publish(self, event: ev.Event, global_step: int = 0) -> None:
        """Add ``event`` to the job's stream."""
        self.log.append(event, global_step)

    def begin(self) -> None:
        """The job left the queue: start the clock and publish step 0."""
        self.state = RUNNING
        self._listener = step_listener(self.publish, previews=self.previews)
        self.publish(ev.Progress(1, self.request.n, 0, self.request.steps))

    def on_step(self, event: StepEvent) -> None:
        """Record the pipeline's progress; publish it, with a preview of the x0 estimate when known."""
        self.index, self.step = event.index, event.step
        if self._listener is None:
            self._listener = step_listener(self.publish, previews=self.previews)
        self._listener(event)

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


def done_event(images: list[GeneratedImage]) -> ev.Done:
    """The ``done`` event: the images' seeds and size (0 for a runner that returns something else)."""
    first = images[0] if images else None
    return ev.Done(
        tuple(getattr(image, "seed", 0) for image in images),
        getattr(first, "width", 0),
        getattr(first, "height", 0),
    )


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
            job.publish(ev.Queued(len(self._waiting)))
            self._cond.notify()

    def cancel(self, job: GenerationJob | str) -> None:
        """Cancel a job (or id): a waiting job leaves the queue now; a running one stops at its next step."""
        if isinstance(job, str):
            job = self.find(job)
        job.cancel_event.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, CANCELLED, Cancelled("the generation was cancelled while queued"))
                self._announce_positions()

    def find(self, job_id: str) -> GenerationJob:
        """The job with ``job_id``: running, waiting or recently finished; else ``JobNotFound``."""
        with self._cond:
            for job in (*self._running, *self._waiting, *self._finished):
                if job.id == job_id:
                    return job
        raise JobNotFound(f"generation job {job_id!r} does not exist or was forgotten", param="id")

    def status(self, job_id: str) -> dict[str, Any]:
        """A JSON-ready view of one job, with its queue position while waiting."""
        job = self.find(job_id)
        with self._cond:
            position = self._waiting.index(job) + 1 if job in self._waiting else None
        return job.status(position)

    def events(self, job_id: str, after: int = 0) -> list[Record]:
        """The job's event records numbered above ``after``."""
        return self.find(job_id).log.since(after)

    def result(self, job_id: str) -> list[GeneratedImage]:
        """The images of a finished job; its error if it failed; ``JobNotFound`` before it ends."""
        job = self.find(job_id)
        if not job.future.done():
            raise JobNotFound(f"generation job {job_id!r} has not finished yet", code="job_not_finished")
        return job.future.result()

    async def wait(self, job_id: str) -> list[GeneratedImage]:
        """The job's images once it ends, or its error; cancelling the wait leaves the job alone."""
        future = asyncio.wrap_future(self.find(job_id).future)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(future)

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
                job.begin()
                self._running.append(job)
                self._announce_positions()
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
            job.publish(done_event(images))

    def _finish(self, job: GenerationJob, state: str, exc: BaseException) -> None:
        """Mark ``job`` ended with ``exc`` (called under the lock)."""
        job.state, job.error = state, str(exc) or type(exc).__name__
        self._finished.append(job)
        if not job.future.done():
            job.future.set_exception(exc)
        if state == CANCELLED:
            code = getattr(exc, "code", None)
            job.publish(ev.Cancelled(job.error, code))
        else:
            job.publish(ev.error_event(exc))

    def _announce_positions(self) -> None:
        """Tell every waiting job its new place in line (called under the lock)."""
        for position, job in enumerate(self._waiting, start=1):
            job.publish(ev.Queued(position))
