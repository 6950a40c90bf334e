"""Image routes (each also without ``/v1``): ``POST /v1/images/generations`` (txt2img, or img2img with
LocalAI's ``file``), ``/v1/images/edits`` and ``/v1/images/variations`` (multipart), generated files, job list.

Every request is validated, its images decoded and its edit checked before it is queued, so bad input is a
4xx naming the param with no job queued and nothing written. Notes about the input (a mask resized, extra
images ignored) come back in the ``x-localai-warning`` header; the mode that ran (``1 (auto)``) in
``x-localai-mode``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from localai_sd.errors import Cancelled, LocalAISDError
from localai_sd.jobs.backend import JobBackend
from localai_sd.pipeline.images_in import decode_image
from localai_sd.pipeline.img2img import VARIATION_STRENGTH, EditSpec
from localai_sd.pipeline.output import EXTENSIONS, check_output_compression, render
from localai_sd.pipeline.pipeline import GeneratedImage
from localai_sd.server import streaming
from localai_sd.server.errors import ApiError
from localai_sd.server.jobs import GenerationJob
from localai_sd.server.schemas import (
    RESPONSE_SIZES,
    ExtensionFields,
    ImageData,
    ImageEditFields,
    ImageGenerationBody,
    ImagesResponse,
    component_ref,
    json_body_schema,
    parse_body,
    validate_fields,
)
from localai_sd.server.state import Prepared, ServerState, raw_request
from localai_sd.server.uploads import EditUpload, decode_file_field, first_image, read_edit_form
from localai_sd.server.urls import absolute_url

#: How often a waiting request checks whether its client has gone, seconds.
DISCONNECT_POLL_SECONDS = 0.2
IMAGE_ROUTE = "/generated-images"
WARNING_HEADER = "x-localai-warning"
MODE_HEADER = "x-localai-mode"
StreamKind = Literal["image_generation", "image_edit"]


def server_state(request: Request) -> ServerState:
    """The app's ``ServerState``."""
    return request.app.state.server


async def stream_hook(
    request: Request, state: ServerState, job: GenerationJob, *, partial_images: int, kind: StreamKind
) -> Response:
    """OpenAI streaming (``stream: true``) of a prepared, not yet queued job: partial images, then completed."""
    return await streaming.stream_images(
        request, state.backend, job, partial_images=partial_images, kind=kind
    )


async def wait_for_job(backend: JobBackend, job_id: str, request: Request) -> list[GeneratedImage]:
    """Await the job through its backend; if the client disconnects first, cancel it (dequeue, or stop at the
    next step)."""
    waiting = asyncio.ensure_future(backend.wait(job_id))
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return waiting.result()
            if await request.is_disconnected():
                raise Cancelled("the client disconnected; the generation was cancelled")
    except (Cancelled, asyncio.CancelledError):
        # The client is gone (or the server stops): free the worker for the next request.
        waiting.cancel()
        with contextlib.suppress(LocalAISDError):
            await run_in_threadpool(backend.cancel, job_id)
        raise


def image_item(
    image: GeneratedImage,
    response_format: str,
    state: ServerState,
    request: Request,
    output_format: str = "png",
    compression: int = 100,
    extras: dict[str, object] | None = None,
) -> ImageData:
    """One response item: a URL to a stored copy, or the image in base64, in ``output_format``; with its seed."""
    data = render(image.png, output_format, compression, extras)
    if response_format == "b64_json":
        return ImageData(b64_json=base64.b64encode(data).decode("ascii"), seed=image.seed)
    name = state.images.save(data, EXTENSIONS[output_format])
    return ImageData(
        url=absolute_url(request, state.settings.base_url, f"{IMAGE_ROUTE}/{name}"), seed=image.seed
    )


def header_text(notes: list[str] | tuple[str, ...]) -> str:
    """Warnings as one header value (ASCII; ``; `` between them)."""
    return "; ".join(notes).encode("ascii", "replace").decode("ascii")


async def run_prepared(
    request: Request, prepared: Prepared, fields: ExtensionFields, kind: StreamKind, notes: list[str]
) -> Response:
    """Queue the prepared job (or stream it), wait (cancelling on disconnect), answer ``ImagesResponse``."""
    state = server_state(request)
    output_format = fields.output_format or "png"
    compression = check_output_compression(fields.output_compression)
    job = prepared.job()
    if fields.stream:
        return await stream_hook(request, state, job, partial_images=fields.partial_images or 0, kind=kind)
    await run_in_threadpool(state.backend.submit, job)
    images = await wait_for_job(state.backend, job.id, request)
    gen = prepared.request
    extras: dict[str, object] = {"Mode": gen.mode_label}
    data = [
        await run_in_threadpool(
            image_item, image, fields.format(), state, request, output_format, compression, extras
        )
        for image in images
    ]
    response = ImagesResponse(
        created=int(time.time()),
        id=str(uuid.uuid4()),
        data=data,
        size=gen.size if gen.size in RESPONSE_SIZES else None,  # type: ignore[arg-type]
        output_format=fields.output_format,
    )
    warnings = [*notes, *prepared.warnings]
    for image in images:
        warnings.extend(w for w in image.warnings if w not in warnings)
    headers = {MODE_HEADER: gen.mode_label}
    if warnings:
        headers[WARNING_HEADER] = header_text(warnings)
    return JSONResponse(response.model_dump(exclude_none=True), headers=headers)


def decode_file(body: ImageGenerationBody) -> EditSpec | None:
    """LocalAI's ``file`` (img2img of the whole image at ``strength``), decoded; None without one."""
    if body.file is None:
        return None
    image = decode_image(decode_file_field(body.file), param="file")
    return EditSpec(image, None, body.strength)


async def generate_images(request: Request) -> Response:
    """Validate, queue, wait (cancelling on disconnect) and answer with OpenAI's ``ImagesResponse``."""
    body = await parse_body(request, ImageGenerationBody)
    state = server_state(request)
    if body.strength is not None and body.file is None:
        raise ApiError(400, "strength applies to an input image: send one in 'file'", param="strength")
    edit = await run_in_threadpool(decode_file, body)
    prepared = await run_in_threadpool(state.prepare_request, raw_request(body), body.model, edit)
    kind: StreamKind = "image_generation"
    return await run_prepared(request, prepared, body, kind, [])


def edit_spec(upload: EditUpload, fields: ImageEditFields, *, variation: bool) -> EditSpec:
    """Decode the first image (and mask), naming the field that fails; the edit settings from the form."""
    name, data = first_image(upload)
    image = decode_image(data, param=name)
    if variation:
        if upload.mask is not None:
            raise ApiError(
                400, "variations take no mask: use /v1/images/edits to repaint a region", param="mask"
            )
        return EditSpec.variation(image, VARIATION_STRENGTH if fields.strength is None else fields.strength)
    mask = None if upload.mask is None else decode_image(upload.mask, param="mask")
    settings: dict[str, Any] = {
        key: value
        for key in ("mask_blur", "inpaint_only_masked", "padding", "mask_invert")
        if (value := getattr(fields, key)) is not None
    }
    return EditSpec(image, mask, fields.strength, **settings)


async def edit_like(request: Request, *, variation: bool) -> Response:
    """``/images/edits`` and ``/images/variations``: read the form, decode, prepare, run."""
    upload = await read_edit_form(request)
    fields = validate_fields(ImageEditFields, dict(upload.fields))
    if not variation and not (fields.prompt or "").strip():
        raise ApiError(400, "prompt is required: describe the edited image", param="prompt")
    state = server_state(request)
    edit = await run_in_threadpool(edit_spec, upload, fields, variation=variation)
    prompt = "" if variation else fields.prompt
    raw = raw_request(fields, prompt)
    prepared = await run_in_threadpool(state.prepare_request, raw, fields.model, edit)
    return await run_prepared(request, prepared, fields, "image_edit", upload.warnings())


async def edit_images(request: Request) -> Response:
    """Edit an image: img2img, or inpainting with a mask (transparent or white = repaint)."""
    return await edit_like(request, variation=False)


async def image_variations(request: Request) -> Response:
    """Variations of an image: img2img with an empty prompt, strength 0.5, seeds s, s+1, ..."""
    return await edit_like(request, variation=True)


def multipart_schema(*, variation: bool) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for an edit route: the form's text fields plus its image parts."""
    binary = {"type": "string", "format": "binary"}
    properties: dict[str, Any] = {
        "image": binary,
        "image[]": {"type": "array", "items": binary},
    }
    if not variation:
        properties["mask"] = binary
    schema = {
        "allOf": [
            component_ref(ImageEditFields),
            {"type": "object", "properties": properties, "required": ["image"]},
        ]
    }
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def build_router() -> APIRouter:
    """The image routes."""
    router = APIRouter()
    for prefix in ("/v1", ""):
        router.add_api_route(
            f"{prefix}/images/generations",
            generate_images,
            methods=["POST"],
            summary="Create images from a prompt (img2img with LocalAI's 'file')",
            openapi_extra=json_body_schema(ImageGenerationBody),
        )
        router.add_api_route(
            f"{prefix}/images/edits",
            edit_images,
            methods=["POST"],
            summary="Edit an image (multipart): img2img, or inpainting with a mask",
            openapi_extra=multipart_schema(variation=False),
        )
        router.add_api_route(
            f"{prefix}/images/variations",
            image_variations,
            methods=["POST"],
            summary="Variations of an image (multipart)",
            openapi_extra=multipart_schema(variation=True),
        )

    @router.get(IMAGE_ROUTE + "/{name}", summary="A generated image (URL mode), until it expires")
    async def generated_image(name: str, request: Request) -> FileResponse:
        """Serve an image this server wrote and that has not expired; anything else is 404."""
        store = server_state(request).images
        path = store.path_for(name)
        if path is None:
            raise ApiError(404, f"image {name!r} does not exist or has expired", code="image_not_found")
        headers = {"cache-control": "private, max-age=3600"}
        return FileResponse(path, media_type=store.media_type(name), headers=headers)

    @router.get("/v1/images/jobs", summary="Generation jobs: running, queued and recently finished")
    async def image_jobs(request: Request) -> JSONResponse:
        """List generation jobs with their progress."""
        return JSONResponse(
            {"object": "list", "data": await run_in_threadpool(server_state(request).backend.jobs)}
        )

    return router
