"""Server-sent events: a job's event stream, and OpenAI's image streaming (``stream: true``).

Both read the job's numbered events through the ``JobBackend`` (``follow``), so they work the same
whichever backend runs the job, and send a keep-alive comment after ``keepalive_seconds`` of
silence (one UNet step at 512x512 can outlast a proxy's idle timeout).

OpenAI streaming (``openai/types/image_gen_stream_event.py``): ``partial_images`` (0-3) events
``<kind>.partial_image`` with ``b64_json`` and ``partial_image_index``, then one
``<kind>.completed`` per image. Partial images are the cheap latent previews at the global steps
ceil(k N / (p + 1)), scaled to the requested size. A client that disconnects cancels its job.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from localai_sd.errors import LocalAISDError
from localai_sd.jobs import events as ev
from localai_sd.jobs.backend import JobBackend, follow
from localai_sd.pipeline.preview import resize_png
from localai_sd.server.jobs import GenerationJob

KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
StreamKind = Literal["image_generation", "image_edit"]


class StreamFields(BaseModel):
    """The body fields that ask for OpenAI streaming (for the generations and edits body models)."""

    stream: bool | None = None
    partial_images: int | None = Field(default=None, ge=0, le=3)


def sse(data: dict[str, Any], event: str | None = None, event_id: int | None = None) -> bytes:
    """One server-sent event: optional ``id:`` and ``event:`` lines, then ``data:`` as compact JSON."""
    lines = [f"id: {event_id}"] if event_id is not None else []
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def event_stream_response(body: AsyncIterator[bytes]) -> StreamingResponse:
    """``text/event-stream`` that proxies must not buffer."""
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


async def job_events(
    backend: JobBackend, job_id: str, *, after: int = 0, keepalive_seconds: float
) -> AsyncIterator[bytes]:
    """A job's events as SSE (``event:`` is the type, ``id:`` the sequence number), keep-alives between."""
    async for record in follow(backend, job_id, after=after, keepalive_seconds=keepalive_seconds):
        if record is None:
            yield KEEPALIVE
        else:
            yield sse(ev.to_dict(record.event), record.event.kind, record.seq)


def image_event(kind: str, phase: str, b64: str, size: str, **extra: Any) -> dict[str, Any]:
    """An OpenAI image stream event: ``<kind>.<phase>`` with the image and its output settings."""
    return {
        "type": f"{kind}.{phase}",
        "b64_json": b64,
        "created_at": int(time.time()),
        "size": size,
        "quality": "auto",
        "background": "opaque",
        "output_format": "png",
        **extra,
    }


def error_payload(event: ev.Error | ev.Cancelled) -> dict[str, Any]:
    """An error event body the official client raises as ``APIError``."""
    kind = "invalid_request_error" if isinstance(event, ev.Cancelled) else event.type
    param = event.param if isinstance(event, ev.Error) else None
    return {
        "type": "error",
        "error": {"message": event.message, "type": kind, "param": param, "code": event.code},
    }


def global_step(event: ev.Preview) -> int:
    """The preview's step counted over all images (1-based)."""
    return (event.image - 1) * event.steps + event.step


async def openai_events(
    backend: JobBackend,
    job: GenerationJob,
    *,
    partial_steps: tuple[int, ...],
    kind: StreamKind,
    keepalive_seconds: float,
) -> AsyncIterator[bytes]:
    """The job as OpenAI stream events; cancels the job if the client leaves before the end."""
    request, sent, finished = job.request, 0, False
    try:
        async for record in follow(backend, job.id, keepalive_seconds=keepalive_seconds):
            event = None if record is None else record.event
            if event is None:
                yield KEEPALIVE
            elif isinstance(event, ev.Preview) and global_step(event) in partial_steps:
                png = base64.b64decode(event.png_b64)
                scaled = await run_in_threadpool(resize_png, png, request.width, request.height)
                b64 = base64.b64encode(scaled).decode("ascii")
                yield sse(
                    image_event(kind, "partial_image", b64, request.size, partial_image_index=sent),
                    f"{kind}.partial_image",
                )
                sent += 1
            elif isinstance(event, ev.Done):
                for image in await run_in_threadpool(backend.result, job.id):
                    b64 = base64.b64encode(image.png).decode("ascii")
                    yield sse(image_event(kind, "completed", b64, request.size), f"{kind}.completed")
                finished = True
            elif isinstance(event, ev.Error | ev.Cancelled):
                yield sse(error_payload(event), "error")
                finished = True
    finally:
        if not finished:
            with contextlib.suppress(LocalAISDError):
                backend.cancel(job.id)


async def stream_images(
    request: Request,
    backend: JobBackend,
    job: GenerationJob,
    *,
    partial_images: int,
    kind: StreamKind = "image_generation",
    keepalive_seconds: float | None = None,
) -> StreamingResponse:
    """Submit ``job`` (``QueueFull`` -> 429 before any byte is sent) and stream it as OpenAI does."""
    steps = ev.partial_steps(job.request.n * job.request.steps, partial_images)
    job.log.keep_steps = frozenset(steps)
    await run_in_threadpool(backend.submit, job)
    if keepalive_seconds is None:
        keepalive_seconds = request.app.state.server.settings.sse_keepalive_seconds
    body = openai_events(backend, job, partial_steps=steps, kind=kind, keepalive_seconds=keepalive_seconds)
    return event_stream_response(body)
