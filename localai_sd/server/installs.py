"""Install jobs: a bounded executor and queue (429 when full), LocalAI's job status, eviction of finished jobs.

Each ``/models/apply`` becomes one job on a small thread pool (``install_workers``); at most
``install_queue_size`` more wait, after which ``start`` raises ``QueueFull``. Finished jobs stay
visible at ``/models/jobs`` for ``install_job_ttl_seconds`` and only the newest
``install_jobs_kept`` of them, so neither threads nor the job table grow with the request count.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from localai_sd.errors import Cancelled, QueueFull, ShuttingDown
from localai_sd.settings import Settings

#: 1024-based units, as LocalAI's ``formatBytes``.
BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


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
    #: Monotonic time the job finished (for eviction), None while it waits or runs.
    finished_at: float | None = field(default=None, repr=False)

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
    """Install jobs on a bounded thread pool with a bounded queue; finished jobs evicted by age and count."""

    def __init__(
        self,
        *,
        workers: int = 2,
        max_waiting: int = 16,
        keep: int = 100,
        ttl_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """A pool of ``workers`` threads (made on demand); ``max_waiting`` more jobs may wait."""
        self._workers = max(1, workers)
        self._max_waiting = max(0, max_waiting)
        self._keep, self._ttl, self._clock = max(0, keep), ttl_seconds, clock
        self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="localai-sd-install")
        self._jobs: dict[str, InstallStatus] = {}
        self._futures: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._stopping = False

    @classmethod
    def from_settings(cls, settings: Settings) -> InstallJobs:
        """Jobs bounded by the settings' install workers, queue size and retention."""
        return cls(
            workers=settings.install_workers,
            max_waiting=settings.install_queue_size,
            keep=settings.install_jobs_kept,
            ttl_seconds=settings.install_job_ttl_seconds,
        )

    def start(self, work: InstallWork, *, name: str = "") -> InstallStatus:
        """Queue ``work(status)``; it returns a final message or raises. QueueFull when the queue is full."""
        status = InstallStatus(uuid=str(uuid.uuid4()), gallery_model_name=name, message="processing")
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down; try the install again later")
            self._evict()
            pending = len(self._futures)
            if pending >= self._workers + self._max_waiting:
                raise QueueFull(
                    f"the install queue is full ({pending} installs running or waiting, limit "
                    f"{self._workers + self._max_waiting}); try again later"
                )
            self._jobs[status.uuid] = status
            self._futures[status.uuid] = self._executor.submit(self._run, work, status)
        return status

    def get(self, job_id: str) -> InstallStatus | None:
        """The status of job ``job_id``, or None."""
        with self._lock:
            self._evict()
            return self._jobs.get(job_id)

    def all(self) -> dict[str, InstallStatus]:
        """Every kept job, by uuid."""
        with self._lock:
            self._evict()
            return dict(self._jobs)

    def pending(self) -> int:
        """Jobs running or waiting."""
        with self._lock:
            return len(self._futures)

    def cancel_all(self) -> None:
        """Refuse new jobs, drop the waiting ones and ask running ones to cancel (first shutdown signal)."""
        with self._lock:
            self._stopping = True
            items = [(self._jobs[key], future) for key, future in self._futures.items()]
        for status, future in items:
            status.cancel_event.set()
            if future.cancel():
                self._finished(status, ShuttingDown("the server shut down before the install started"))

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every job and wait up to ``timeout`` seconds for running ones to notice."""
        self.cancel_all()
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _run(self, work: InstallWork, status: InstallStatus) -> None:
        """Run one install and record ``completed`` or the error text."""
        try:
            message = work(status)
        except Exception as exc:
            self._finished(status, exc)
        else:
            status.progress = 100.0
            self._finished(status, None, message or "completed")

    def _finished(self, status: InstallStatus, exc: Exception | None, message: str = "") -> None:
        """Record the outcome and free the job's queue slot."""
        if isinstance(exc, Cancelled | ShuttingDown):
            status.cancelled, status.error, status.message = True, str(exc), f"cancelled: {exc}"
        elif exc is not None:
            text = str(exc) or type(exc).__name__
            status.error, status.message = text, f"error: {text}"
        else:
            status.message = message
        status.processed = True
        with self._lock:
            status.finished_at = self._clock()
            self._futures.pop(status.uuid, None)

    def _evict(self) -> None:
        """Drop finished jobs older than the TTL, then the oldest beyond ``keep`` (called under the lock)."""
        now = self._clock()
        finished = [s for s in self._jobs.values() if s.finished_at is not None]
        expired = {s.uuid for s in finished if s.finished_at is not None and now - s.finished_at > self._ttl}
        live = sorted((s for s in finished if s.uuid not in expired), key=lambda s: s.finished_at or now)
        surplus = {s.uuid for s in live[: max(0, len(live) - self._keep)]}
        for key in expired | surplus:
            del self._jobs[key]
