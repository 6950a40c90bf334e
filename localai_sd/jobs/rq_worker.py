"""A generation worker of the cluster: an RQ ``SimpleWorker`` that keeps its models warm and runs one job at a
time from the queue of each model it holds (``sd:{model}``).

``SimpleWorker`` runs jobs in its own process: a fork per job would lose the warm nets, and OpenMP is not
fork-safe. The job function ``perform(payload)`` rebuilds the request from JSON (``localai_sd.jobs.payload``),
leases the warm pipeline, publishes progress and previews as numbered events (``redis_store.JobStore``),
polls the job's cancel flag between steps, and returns the PNGs (or the typed error) as JSON. The final
event is published only after RQ has stored that result, so a reader that sees it can fetch the result.

Each heartbeat also records the worker in ``sd:workers:{queue}`` (the API refuses jobs for a model no live
worker holds). If Redis goes away the worker waits and starts again, with its models still loaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from rq import SimpleWorker, get_current_job
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer

from localai_sd.errors import Cancelled, LocalAISDError
from localai_sd.jobs import events as ev
from localai_sd.jobs.payload import check_version, edit_from, error_payload, request_from, result_payload
from localai_sd.jobs.redis_store import JobStore, connect, queue_name, safe_url
from localai_sd.jobs.steps import step_listener
from localai_sd.models import load_config
from localai_sd.pipeline.pipeline import GeneratedImage
from localai_sd.pipeline.request import Limits
from localai_sd.server.models_cache import ModelCache
from localai_sd.settings import Settings

LOG = logging.getLogger("localai_sd.worker")
#: The worker serving the job that runs in this context (set by ``GenerationWorker.execute_job``).
CURRENT: contextvars.ContextVar[WorkerContext] = contextvars.ContextVar("localai_sd_worker")
#: Seconds between two starts of the RQ loop after Redis went away.
RECONNECT_SECONDS = 1.0


def default_name() -> str:
    """``host.pid``: unique per process, readable in job results and logs."""
    return f"{socket.gethostname()}.{os.getpid()}"


def done_event(images: list[GeneratedImage]) -> ev.Done:
    """The ``done`` event of a job's images."""
    first = images[0]
    return ev.Done(tuple(image.seed for image in images), first.width, first.height)


@dataclass
class WorkerContext:
    """What a job needs from its worker: settings, the warm models, the Redis job store, the worker's name."""

    name: str
    settings: Settings
    models: ModelCache
    store: JobStore
    #: Final events waiting for RQ to store the job's result (job id -> event).
    pending: dict[str, ev.Event] = field(default_factory=dict)
    #: Set by SIGINT/SIGTERM: the worker ends instead of starting again.
    stopping: bool = False

    def run(self, job_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Run one job; its images or its typed error as JSON (library errors are answers, not retries)."""
        keep = frozenset(payload.get("keep_previews", ()))

        def publish(event: ev.Event, global_step: int = 0) -> None:
            self.store.append(job_id, event, global_step, keep)

        try:
            images = self.generate(job_id, payload, publish)
        except Cancelled as exc:
            self.pending[job_id] = ev.Cancelled(exc.message, exc.code)
            return error_payload(exc, self.name)
        except LocalAISDError as exc:
            self.pending[job_id] = ev.error_event(exc)
            return error_payload(exc, self.name)
        self.pending[job_id] = done_event(images)
        return result_payload(images, self.name)

    def generate(
        self, job_id: str, payload: dict[str, Any], publish: Callable[[ev.Event, int], None]
    ) -> list[GeneratedImage]:
        """Rebuild the request and edit, lease the warm pipeline, generate with progress and cancel checks."""
        check_version(payload)
        request = request_from(payload["request"], Limits.from_settings(self.settings))
        edit = edit_from(payload["edit"])
        config = load_config(self.settings.models_path, payload["model"])

        def cancelled() -> bool:
            return self.store.cancel_requested(job_id)

        if cancelled():
            raise Cancelled("the generation was cancelled before it started")
        publish(ev.Progress(1, request.n, 0, request.steps), 0)
        on_step = step_listener(publish, previews=bool(payload.get("previews", True)))
        with self.models.lease(config) as pipeline:
            if edit is None:
                return pipeline.generate(request, on_step=on_step, should_cancel=cancelled)
            return pipeline.generate(request, on_step=on_step, should_cancel=cancelled, edit=edit)

    def publish_final(self, job_id: str) -> None:
        """Publish the job's final event (after RQ stored its result)."""
        if (event := self.pending.pop(job_id, None)) is not None:
            self.store.append(job_id, event)


def perform(payload: dict[str, Any]) -> dict[str, Any]:
    """The RQ job function: run ``payload`` on the worker that took it."""
    job = get_current_job()
    assert job is not None
    context = CURRENT.get()
    job.meta["worker"] = context.name
    job.save_meta()
    return context.run(job.id, payload)


class GenerationWorker(SimpleWorker):
    """RQ's in-process worker that records its liveness per queue and publishes final events after results."""

    context: WorkerContext

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job with this worker's context."""
        token = CURRENT.set(self.context)
        try:
            super().execute_job(job, queue)
        finally:
            CURRENT.reset(token)
            self.context.pending.pop(job.id, None)

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any) -> None:
        """Store the result (RQ), then publish the final event readers wait for."""
        super().handle_job_success(job, queue, started_job_registry)
        self.context.publish_final(job.id)

    def request_stop(self, signum: Any, frame: Any) -> None:
        """A warm shutdown (the running job finishes) that ends ``serve_forever`` too."""
        self.context.stopping = True
        super().request_stop(signum, frame)

    def get_heartbeat_ttl(self, job: Job) -> int:
        """How long the running job stays registered without news: its timeout plus the grace setting."""
        return int(job.timeout or self.worker_ttl) + self.context.settings.job_grace_seconds

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """RQ's heartbeat, plus ``sd:workers:{queue}`` entries that live as long."""
        super().heartbeat(timeout, pipeline)
        ttl = timeout or self.worker_ttl + 60
        self.context.store.heartbeat(self.queue_names(), self.context.name, ttl)


def worker_queues(models: list[str]) -> list[str]:
    """The queue names of ``models``."""
    return [queue_name(model) for model in models]


def serve_forever(
    settings: Settings,
    models: list[str],
    cache: ModelCache,
    *,
    name: str | None = None,
    burst: bool = False,
    maintenance_seconds: int | None = None,
) -> None:
    """Work the queues of ``models`` until stopped (SIGINT/SIGTERM); start again whenever Redis went away."""
    assert settings.redis_url is not None
    name = name or default_name()
    client = connect(settings.redis_url, socket_timeout=None)
    store = JobStore(client, settings.job_result_ttl_seconds)
    context = WorkerContext(name, settings, cache, store)
    queues = worker_queues(models)
    for config in (load_config(settings.models_path, model) for model in models):
        with cache.lease(config):
            LOG.info("model %s loaded", config.name)
    restarts = 0
    while True:
        worker = GenerationWorker(
            queues,
            name=f"{name}.{restarts}",
            connection=client,
            serializer=JSONSerializer,
            worker_ttl=settings.worker_ttl_seconds,
            maintenance_interval=maintenance_seconds or max(1, settings.worker_ttl_seconds - 15),
        )
        worker.context = context
        worker.max_connection_wait_time = 5.0
        try:
            worker.work(burst=burst, logging_level="WARNING")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            LOG.warning("Redis at %s is unreachable (%s); retrying", safe_url(settings.redis_url), exc)
        if burst or context.stopping:
            break
        restarts += 1
        time.sleep(RECONNECT_SECONDS)
    with contextlib.suppress(redis.RedisError):
        store.leave(queues, name)
