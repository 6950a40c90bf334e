"""Job routes: start a generation without waiting, follow its events (SSE), cancel it, fetch its images.

``POST /v1/images/jobs`` takes the generations body and answers ``{id}`` at once; the client then
reads ``GET /v1/images/jobs/{id}/events`` (server-sent events, resumable with ``Last-Event-ID``)
and ``GET /v1/images/jobs/{id}/result``. The routes talk only to the ``JobBackend``.
``GET /v1/studio/options`` feeds the studio page's pickers.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from localai_sd.jobs.backend import JobBackend, JobNotFound
from localai_sd.pipeline.sampler_names import sampler_rows
from localai_sd.server.errors import ApiError
from localai_sd.server.jobs import GenerationJob
from localai_sd.server.routes_images import image_item
from localai_sd.server.schemas import ImageGenerationBody, json_body_schema, parse_body
from localai_sd.server.state import ServerState
from localai_sd.server.streaming import event_stream_response, job_events

JOBS = "/v1/images/jobs"
#: The page's size presets (all multiples of 64).
SIZE_PRESETS = ("256x256", "384x384", "512x512", "512x768", "768x512", "640x384", "384x640")
SCHEDULES = ("default", "karras", "exponential")


class JobCreated(BaseModel):
    """A queued job: its id and where to follow it."""

    id: str
    object: str = "image.job"
    status: str
    events_url: str
    result_url: str


class JobImage(BaseModel):
    """One image of a finished job, with its A1111 infotext."""

    url: str | None = None
    b64_json: str | None = None
    seed: int
    width: int
    height: int
    parameters: str


class JobResult(BaseModel):
    """The images of a finished job."""

    id: str
    created: int
    data: list[JobImage]


def backend_of(request: Request) -> JobBackend:
    """The app's job backend (the local queue, or the cluster's)."""
    return request.app.state.server.backend


def found(job_id: str) -> ApiError:
    """404 for an unknown job."""
    return ApiError(404, f"generation job {job_id!r} does not exist or was forgotten", code="job_not_found")


async def create_job(request: Request) -> JobCreated:
    """Validate like ``/v1/images/generations``, queue the job, answer its id at once."""
    body = await parse_body(request, ImageGenerationBody)
    state: ServerState = request.app.state.server
    gen_request, config = await run_in_threadpool(state.prepare, body)
    job = GenerationJob(config, gen_request)
    await run_in_threadpool(backend_of(request).submit, job)
    return JobCreated(
        id=job.id,
        status=job.state,
        events_url=f"{JOBS}/{job.id}/events",
        result_url=f"{JOBS}/{job.id}/result",
    )


def build_router() -> APIRouter:
    """The job routes and the studio's options."""
    router = APIRouter()
    router.add_api_route(
        JOBS,
        create_job,
        methods=["POST"],
        summary="Queue a generation and answer its id at once",
        openapi_extra=json_body_schema(ImageGenerationBody),
    )

    @router.get(JOBS + "/{job_id}", summary="One generation job: state, queue position, progress")
    async def job_status(job_id: str, request: Request) -> dict[str, Any]:
        """The job's status."""
        try:
            return await run_in_threadpool(backend_of(request).status, job_id)
        except JobNotFound:
            raise found(job_id) from None

    @router.get(
        JOBS + "/{job_id}/events",
        summary="A job's events as server-sent events (queued, progress, preview, done, error, cancelled)",
        response_class=StreamingResponse,
    )
    async def job_event_stream(
        job_id: str, request: Request, after: int = Query(0, ge=0, le=2**31)
    ) -> StreamingResponse:
        """Replay the job's events after ``after`` (or ``Last-Event-ID``), then follow them live."""
        backend = backend_of(request)
        try:
            await run_in_threadpool(backend.status, job_id)
        except JobNotFound:
            raise found(job_id) from None
        last = request.headers.get("last-event-id", "")
        after = max(after, int(last)) if last.isdigit() and len(last) < 10 else after
        keepalive = request.app.state.server.settings.sse_keepalive_seconds
        return event_stream_response(job_events(backend, job_id, after=after, keepalive_seconds=keepalive))

    @router.post(JOBS + "/{job_id}/cancel", summary="Cancel a job: dequeue it, or stop it at its next step")
    async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
        """Cancel and answer the job's status."""
        backend = backend_of(request)
        try:
            await run_in_threadpool(backend.cancel, job_id)
            return await run_in_threadpool(backend.status, job_id)
        except JobNotFound:
            raise found(job_id) from None

    @router.get(JOBS + "/{job_id}/result", summary="The images of a finished job")
    async def job_result(
        job_id: str, request: Request, response_format: str = Query("b64_json", pattern="^(url|b64_json)$")
    ) -> JobResult:
        """The images (base64 or URLs) with seeds and infotext; 409 before the job ends."""
        backend = backend_of(request)
        try:
            images = await run_in_threadpool(backend.result, job_id)
        except JobNotFound as exc:
            if exc.code == "job_not_finished":
                raise ApiError(409, str(exc), code=exc.code) from None
            raise found(job_id) from None
        state: ServerState = request.app.state.server
        data = []
        for image in images:
            item = await run_in_threadpool(image_item, image, response_format, state, request)
            data.append(
                JobImage(
                    url=item.url,
                    b64_json=item.b64_json,
                    seed=image.seed,
                    width=image.width,
                    height=image.height,
                    parameters=image.parameters,
                )
            )
        return JobResult(id=job_id, created=int(time.time()), data=data)

    @router.get(
        "/v1/studio/options", summary="Choices for the studio page: samplers, schedules, sizes, defaults"
    )
    async def studio_options(request: Request) -> dict[str, Any]:
        """Samplers (with A1111/sd.cpp names), schedules, size presets and the server's defaults."""
        settings = request.app.state.server.settings
        samplers = [{"name": row[0], "a1111": row[1], "sdcpp": row[2]} for row in sampler_rows()]
        return {
            "samplers": samplers,
            "schedules": list(SCHEDULES),
            "sizes": list(SIZE_PRESETS),
            "default_model": settings.default_model,
            "default_steps": settings.default_steps,
            "default_mode": settings.default_mode,
        }

    return router
