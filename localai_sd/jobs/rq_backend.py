"""The cluster ``JobBackend``: generation jobs go to RQ queues in Redis, one per model, for ``local-ai worker``s.

The API keeps no job state of its own: the job (a JSON payload, ``localai_sd.jobs.payload``), its events
(``redis_store.JobStore``), its cancel flag and its result all live in Redis, so several API replicas can
serve the same jobs. Each job is enqueued with an explicit ``job_timeout`` derived from its work, a
``result_ttl`` of an hour or more, and ``Retry(max=job_retries)``: a job whose worker died is run again
(seeds make the re-run identical). Redis down is ``BackendUnavailable`` (HTTP 503 with ``Retry-After``); the
client reconnects by itself when Redis returns. A job for a model no live worker holds is refused at once
(``NoWorker``), and a queued job whose workers all went away fails after ``no_worker_timeout_seconds``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import utcparse

from localai_sd.errors import Cancelled, LocalAISDError, NoWorker, QueueFull, WorkerFailed
from localai_sd.jobs import events as ev
from localai_sd.jobs.backend import JobNotFound, follow
from localai_sd.jobs.events import Record
from localai_sd.jobs.payload import error_for_code, error_from, images_from, job_payload
from localai_sd.jobs.redis_store import PREFIX, JobStore, connect, queue_name, reachable
from localai_sd.pipeline.pipeline import GeneratedImage
from localai_sd.pipeline.request import GenerationRequest
from localai_sd.settings import Settings

#: What the workers run: ``localai_sd.jobs.rq_worker.perform(payload)``.
PERFORM = "localai_sd.jobs.rq_worker.perform"
#: The UNet step's time grows with the pixel count, and faster than linearly past 512x512 (attention).
BASE_PIXELS = 512 * 512
#: Estimated work is multiplied by this before the floor is added.
TIMEOUT_MARGIN = 2.0
#: Finished jobs listed by ``jobs()`` per model.
KEEP_FINISHED_JOBS = 32
WAITING = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
STATES = {
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.STARTED: "running",
    JobStatus.FINISHED: "done",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "cancelled",
    JobStatus.CANCELED: "cancelled",
}


def job_timeout(request: GenerationRequest, floor_seconds: int, step_seconds_512: float) -> int:
    """RQ's ``job_timeout``: floor + 2 x n x steps x seconds per step at this size (x r, or r^2 past 512^2)."""
    ratio = request.width * request.height / BASE_PIXELS
    per_step = step_seconds_512 * max(ratio, ratio * ratio)
    return int(floor_seconds + TIMEOUT_MARGIN * request.n * request.steps * per_step)


class RQBackend:
    """Submit, cancel and watch generation jobs run by RQ workers through Redis."""

    def __init__(self, settings: Settings, *, poll_seconds: float = 0.05):
        """A backend for ``settings.redis_url`` (no connection is made until the first call)."""
        assert settings.redis_url is not None
        self.url = settings.redis_url
        self.settings = settings
        self.poll_seconds = poll_seconds
        self.redis = connect(self.url)
        self.store = JobStore(self.redis, settings.job_result_ttl_seconds)

    def queue(self, model: str) -> Queue:
        """The RQ queue of ``model`` (JSON-serialised jobs: nothing is pickled)."""
        return Queue(queue_name(model), connection=self.redis, serializer=JSONSerializer)

    # The JobBackend protocol.

    def submit(self, job: Any) -> None:
        """Enqueue ``job``: ``NoWorker`` without a live worker for its model, ``QueueFull`` over the bound."""
        settings = self.settings
        with reachable(self.url):
            queue = self.queue(job.model)
            if self.store.live_workers(queue.name) == 0:
                raise NoWorker(
                    f"no worker holds model {job.model!r} (queue {queue.name!r}): start one with "
                    f"`local-ai worker --model {job.model}`, or pick another model",
                )
            waiting = queue.count
            if waiting and waiting >= settings.queue_size:
                raise QueueFull(
                    f"the generation queue of model {job.model!r} is full ({waiting} waiting, limit "
                    f"{settings.queue_size}); try again later"
                )
            payload = job_payload(
                job.model, job.request, job.edit, keep_previews=job.log.keep_steps, previews=job.previews
            )
            request: GenerationRequest = job.request
            queue.enqueue(
                PERFORM,
                payload,
                job_id=job.id,
                job_timeout=job_timeout(
                    request, settings.job_timeout_floor_seconds, settings.step_seconds_512
                ),
                result_ttl=settings.job_result_ttl_seconds,
                failure_ttl=settings.job_result_ttl_seconds,
                ttl=None,
                retry=Retry(max=settings.job_retries) if settings.job_retries else None,
                description=f"{job.model} {request.size} n={request.n} steps={request.steps}",
                meta={"model": job.model, "n": request.n, "steps": request.steps, "size": request.size},
            )
            self.store.append(job.id, ev.Queued(waiting + 1))

    def cancel(self, job: Any) -> None:
        """Raise the job's cancel flag (a running job stops at its next step); dequeue it if still waiting."""
        job_id = job if isinstance(job, str) else job.id
        with reachable(self.url):
            status, _, _ = self._fields(job_id)
            self.store.request_cancel(job_id)
            if status in WAITING:
                Job(job_id, connection=self.redis, serializer=JSONSerializer).cancel()
                self.store.append(job_id, ev.Cancelled("the generation was cancelled while queued"))

    def status(self, job_id: str) -> dict[str, Any]:
        """A JSON-ready view of the job (the same fields as the local queue's, plus ``worker``)."""
        with reachable(self.url):
            rq_job = self._fetch(job_id)
            if not self.store.finished(job_id):
                self._settle(job_id)
            records = self.store.since(job_id)
            position = rq_job.get_position() if rq_job.get_status() in WAITING else None
        return job_status(rq_job, records, None if position is None else position + 1)

    def events(self, job_id: str, after: int = 0) -> list[Record]:
        """The job's records above ``after``; settles a job that ended without its final event."""
        with reachable(self.url):
            records = self.store.since(job_id, after)
            if records or self.store.finished(job_id):
                return records
            if not self.store.has_events(job_id):
                raise JobNotFound(f"generation job {job_id!r} does not exist or was forgotten", param="id")
            self._settle(job_id)
            return self.store.since(job_id, after)

    def result(self, job_id: str) -> list[GeneratedImage]:
        """The job's images; the job's typed error if it failed; ``JobNotFound`` before it ends."""
        with reachable(self.url):
            status, _, _ = self._fields(job_id)
            final = self._final(job_id)
            if status == JobStatus.FINISHED:
                rq_job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
                return images_from(rq_job.return_value() or {"images": []})
        if isinstance(final, ev.Cancelled):
            raise Cancelled(final.message, code=final.code)
        if isinstance(final, ev.Error):
            cls = error_for_code(final.code)
            raise error_from(
                {"class": cls.__name__, "message": final.message, "param": final.param, "code": final.code}
            )
        raise JobNotFound(f"generation job {job_id!r} has not finished yet", code="job_not_finished")

    async def wait(self, job_id: str) -> list[GeneratedImage]:
        """Follow the job's events until the final one, then its images (or its typed error)."""
        async for record in follow(self, job_id, keepalive_seconds=3600.0, poll_seconds=self.poll_seconds):
            if record is not None and ev.is_final(record.event):
                break
        return await asyncio.to_thread(self.result, job_id)

    def jobs(self) -> list[dict[str, Any]]:
        """Running, waiting and recently finished jobs of every model queue."""
        with reachable(self.url):
            ids: list[str] = []
            for queue in self.queues():
                ids += queue.started_job_registry.get_job_ids()
                ids += queue.get_job_ids()
                ids += queue.finished_job_registry.get_job_ids()[-KEEP_FINISHED_JOBS:]
        views = []
        for job_id in ids:
            try:
                views.append(self.status(job_id))
            except JobNotFound:
                continue
        return views

    def busy(self) -> tuple[int, int]:
        """(running, waiting) job counts over every model queue."""
        with reachable(self.url):
            queues = self.queues()
            return sum(q.started_job_registry.count for q in queues), sum(q.count for q in queues)

    def start(self) -> None:
        """Nothing to start: Redis is connected on first use."""

    def shutdown(self) -> None:
        """Jobs live in Redis and keep running on the workers: nothing to cancel here."""

    def stop(self) -> None:
        """Close the connections."""
        self.redis.close()

    # Helpers.

    def queues(self) -> list[Queue]:
        """The model queues that exist in Redis."""
        return [
            q
            for q in Queue.all(connection=self.redis, serializer=JSONSerializer)
            if q.name.startswith(PREFIX)
        ]

    def _fetch(self, job_id: str) -> Job:
        """The RQ job, or ``JobNotFound``."""
        try:
            return Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
        except Exception as exc:  # rq.exceptions.NoSuchJobError, or a payload this version cannot read
            if isinstance(exc, LocalAISDError):
                raise
            raise JobNotFound(
                f"generation job {job_id!r} does not exist or was forgotten", param="id"
            ) from None

    def _fields(self, job_id: str) -> tuple[str | None, str | None, str | None]:
        """(status, origin queue, enqueued_at) straight from the job hash, without its payload."""
        raw = self.redis.hmget(Job.key_for(job_id), ["status", "origin", "enqueued_at"])
        status, origin, enqueued = (v if v is None or isinstance(v, str) else v.decode() for v in raw)
        return status, origin, enqueued

    def _final(self, job_id: str) -> ev.Event | None:
        """The job's final event, if it ended."""
        seq = self.redis.get(f"{PREFIX}job:{job_id}:final")
        if seq is None:
            return None
        records = self.store.since(job_id, int(seq) - 1)
        return records[0].event if records else None

    def _settle(self, job_id: str) -> None:
        """Publish the final event of a job that RQ ended without one, or that waits with no worker left."""
        status, origin, enqueued = self._fields(job_id)
        if status == JobStatus.FAILED:
            message = "the worker failed this job after its retries (see the worker's log)"
            self.store.append(job_id, ev.error_event(WorkerFailed(message)))
        elif status in (JobStatus.CANCELED, JobStatus.STOPPED):
            self.store.append(job_id, ev.Cancelled("the generation was cancelled"))
        elif status in WAITING and origin and enqueued and self.store.live_workers(origin) == 0:
            waited = time.time() - utcparse(enqueued).timestamp()
            if waited > self.settings.no_worker_timeout_seconds:
                Job(job_id, connection=self.redis, serializer=JSONSerializer).cancel()
                message = (
                    f"no worker took this job from queue {origin!r} for {waited:.0f} s and none is alive: "
                    "start a `local-ai worker` that holds the model"
                )
                self.store.append(job_id, ev.error_event(NoWorker(message)))


def job_status(rq_job: Job, records: list[Record], position: int | None) -> dict[str, Any]:
    """The status view of an RQ job and its events (progress from the newest ``progress`` event)."""
    meta = rq_job.get_meta(refresh=False)
    n, steps = int(meta.get("n", 1)), int(meta.get("steps", 1))
    progress = next((r.event for r in reversed(records) if isinstance(r.event, ev.Progress)), None)
    final = records[-1].event if records and ev.is_final(records[-1].event) else None
    state = STATES.get(rq_job.get_status(refresh=False), "queued")
    if isinstance(final, ev.Error):
        state = "failed"
    elif isinstance(final, ev.Cancelled):
        state = "cancelled"
    index = progress.image - 1 if progress else 0
    step = progress.step if progress else 0
    total = n * steps
    return {
        "id": rq_job.id,
        "model": meta.get("model"),
        "state": state,
        "queue_position": position,
        "n": n,
        "steps": steps,
        "size": meta.get("size"),
        "image": index,
        "step": step,
        "progress": round(100.0 * (index * steps + step) / total, 1) if total else 0.0,
        "error": final.message if isinstance(final, ev.Error | ev.Cancelled) else None,
        "worker": meta.get("worker"),
    }
