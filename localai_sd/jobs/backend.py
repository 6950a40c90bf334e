"""The job-backend seam: what the routes may ask of whatever runs generations.

The local backend is ``localai_sd.server.jobs.GenerationQueue`` (worker threads in this process);
a broker-backed one (RQ/Redis) implements the same methods. Routes call only these, and read
events by pulling numbered records (``events(job_id, after)``), never by callbacks into threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from localai_sd.errors import LocalAISDError
from localai_sd.jobs.events import Record, is_final
from localai_sd.pipeline.pipeline import GeneratedImage

#: How often ``follow`` looks for new events, seconds.
POLL_SECONDS = 0.05


class JobNotFound(LocalAISDError):
    """No job with this id (never existed, or forgotten); the routes answer 404."""

    param = "id"
    code = "job_not_found"


class JobBackend(Protocol):
    """Submit, cancel and watch generation jobs."""

    def submit(self, job: Any) -> None:
        """Queue ``job`` (its id is ``job.id``); raise ``QueueFull`` when over the bound."""

    def cancel(self, job: Any) -> None:
        """Cancel a job (object or id): dequeue it, or stop it at its next step."""

    def status(self, job_id: str) -> dict[str, Any]:
        """A JSON-ready view of one job; ``JobNotFound`` if unknown."""

    def events(self, job_id: str, after: int = 0) -> list[Record]:
        """The job's event records numbered above ``after``, without waiting; ``JobNotFound`` if unknown."""

    def result(self, job_id: str) -> list[GeneratedImage]:
        """The images of a ``done`` job; ``JobNotFound`` if unknown, the job's error if it failed."""

    def jobs(self) -> list[dict[str, Any]]:
        """Running, waiting and recently finished jobs."""

    async def wait(self, job_id: str) -> list[GeneratedImage]:
        """The job's images once it ends, or its typed error (``Cancelled``, ``ShuttingDown``, ...)."""
        ...

    def busy(self) -> tuple[int, int]:
        """(running, waiting) job counts."""

    def start(self) -> None:
        """Start serving jobs (worker threads, or nothing for a broker)."""

    def shutdown(self) -> None:
        """The first shutdown signal: refuse new jobs, stop local work (a broker's jobs go on elsewhere)."""

    def stop(self) -> None:
        """Shut down and release threads or connections."""


async def follow(
    backend: JobBackend,
    job_id: str,
    *,
    after: int = 0,
    keepalive_seconds: float = 15.0,
    poll_seconds: float = POLL_SECONDS,
) -> AsyncIterator[Record | None]:
    """Yield the job's records as they come, and None after ``keepalive_seconds`` of silence; ends after the final one."""
    quiet_since = time.monotonic()
    while True:
        records = backend.events(job_id, after)
        for record in records:
            yield record
            after = record.seq
            if is_final(record.event):
                return
        now = time.monotonic()
        if records:
            quiet_since = now
        elif now - quiet_since >= keepalive_seconds:
            quiet_since = now
            yield None
        await asyncio.sleep(poll_seconds)
