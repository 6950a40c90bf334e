"""Image routes: ``POST /v1/images/generations`` (and ``/images/generations``), generated files, job list."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from localai_sd.errors import Cancelled
from localai_sd.pipeline.pipeline import GeneratedImage
from localai_sd.server.errors import ApiError
from localai_sd.server.jobs import GenerationJob
from localai_sd.server.schemas import (
    ImageData,
    ImageGenerationBody,
    ImagesResponse,
    json_body_schema,
    parse_body,
)
from localai_sd.server.state import ServerState
from localai_sd.server.urls import absolute_url

#: How often a waiting request checks whether its client has gone, seconds.
DISCONNECT_POLL_SECONDS = 0.2
IMAGE_ROUTE = "/generated-images"


def server_state(request: Request) -> ServerState:
    """The app's ``ServerState``."""
    return request.app.state.server


async def wait_for_job(job: GenerationJob, request: Request, state: ServerState) -> list[GeneratedImage]:
    """Await the job; if the client disconnects first, cancel it (dequeue, or stop at the next step)."""
    future = asyncio.wrap_future(job.future)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return future.result()
            if await request.is_disconnected():
                raise Cancelled("the client disconnected; the generation was cancelled")
    except (Cancelled, asyncio.CancelledError):
        # The client is gone (or the server stops): free the worker for the next request.
        state.queue.cancel(job)
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise


def image_item(
    image: GeneratedImage, response_format: str, state: ServerState, request: Request
) -> ImageData:
    """One response item: a URL to a stored copy, or the PNG in base64; with its seed."""
    if response_format == "b64_json":
        return ImageData(b64_json=base64.b64encode(image.png).decode("ascii"), seed=image.seed)
    name = state.images.save(image.png)
    return ImageData(
        url=absolute_url(request, state.settings.base_url, f"{IMAGE_ROUTE}/{name}"), seed=image.seed
    )


async def generate_images(request: Request) -> dict[str, Any]:
    """Validate, queue, wait (cancelling on disconnect) and answer with OpenAI's ``ImagesResponse``."""
    body = await parse_body(request, ImageGenerationBody)
    state = server_state(request)
    gen_request, config = state.prepare(body)
    job = GenerationJob(config, gen_request)
    state.queue.submit(job)
    images = await wait_for_job(job, request, state)
    response_format = body.format()
    data = [await run_in_threadpool(image_item, image, response_format, state, request) for image in images]
    response = ImagesResponse(
        created=int(time.time()), id=str(uuid.uuid4()), data=data, size=gen_request.size
    )
    return response.model_dump(exclude_none=True)


def build_router() -> APIRouter:
    """The image routes."""
    router = APIRouter()
    for path in ("/v1/images/generations", "/images/generations"):
        router.add_api_route(
            path,
            generate_images,
            methods=["POST"],
            summary="Create images from a prompt",
            openapi_extra=json_body_schema(ImageGenerationBody),
        )

    @router.get(IMAGE_ROUTE + "/{name}", summary="A generated image (URL mode), until it expires")
    async def generated_image(name: str, request: Request) -> FileResponse:
        """Serve a PNG this server wrote and that has not expired; anything else is 404."""
        path = server_state(request).images.path_for(name)
        if path is None:
            raise ApiError(404, f"image {name!r} does not exist or has expired", code="image_not_found")
        return FileResponse(path, media_type="image/png", headers={"cache-control": "private, max-age=3600"})

    @router.get("/v1/images/jobs", summary="Generation jobs: running, queued and recently finished")
    async def image_jobs(request: Request) -> JSONResponse:
        """List generation jobs with their progress."""
        return JSONResponse({"object": "list", "data": server_state(request).queue.jobs()})

    return router
