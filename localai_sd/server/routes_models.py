"""LocalAI's model-management routes: list, apply (install job), job status, available, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from localai_sd.models import list_models
from localai_sd.server.errors import ApiError
from localai_sd.server.jobs import InstallStatus
from localai_sd.server.schemas import ApplyBody, ModelEntry, ModelList, json_body_schema, parse_body
from localai_sd.server.state import ServerState
from localai_sd.server.urls import absolute_url


def server_state(request: Request) -> ServerState:
    """The app's ``ServerState``."""
    return request.app.state.server


async def list_installed(request: Request) -> dict[str, Any]:
    """OpenAI's model list of the installed models."""
    names = await run_in_threadpool(list_models, server_state(request).settings.models_path)
    return ModelList(data=[ModelEntry(id=name) for name in names]).model_dump()


async def apply_model(request: Request) -> dict[str, str]:
    """Validate an install request, start it on its own thread, answer at once with the job URL."""
    body = await parse_body(request, ApplyBody)
    state = server_state(request)
    payload = body.model_dump(exclude_none=True)
    validated = await run_in_threadpool(state.gallery.validate, payload)

    def work(status: InstallStatus) -> str:
        """Install, then drop any stale warm copy so the new model is used at once."""
        name = state.gallery.install(validated, status)
        state.models.evict(name)
        return "completed"

    status = state.installs.start(work, name=str(body.name or body.id or body.url or body.config_url or ""))
    return {
        "uuid": status.uuid,
        "status": absolute_url(request, state.settings.base_url, f"/models/jobs/{status.uuid}"),
    }


def build_router() -> APIRouter:
    """The model-management routes."""
    router = APIRouter()
    for path in ("/v1/models", "/models"):
        router.add_api_route(path, list_installed, methods=["GET"], summary="Installed models")
    router.add_api_route(
        "/models/apply",
        apply_model,
        methods=["POST"],
        summary="Install a model (a job)",
        openapi_extra=json_body_schema(ApplyBody),
    )

    @router.get("/models/jobs/{job_id}", summary="Status of one install job")
    async def job_status(job_id: str, request: Request) -> dict[str, Any]:
        """LocalAI's job status, with the error as text."""
        status = server_state(request).installs.get(job_id)
        if status is None:
            raise ApiError(404, f"no install job with id {job_id!r}", param="uuid", code="job_not_found")
        return status.as_json()

    @router.get("/models/jobs", summary="Every install job, by uuid")
    async def all_jobs(request: Request) -> dict[str, Any]:
        """Every job's status keyed by uuid, as LocalAI's map."""
        return {key: status.as_json() for key, status in server_state(request).installs.all().items()}

    @router.get("/models/available", summary="Gallery entries of image models, each with 'installed'")
    async def available(request: Request, all: bool = False) -> list[dict[str, Any]]:
        """The entries of every configured gallery this server can run; ``?all=true`` lists every entry."""
        return await run_in_threadpool(server_state(request).gallery.available, all)

    @router.post("/models/delete/{name}", summary="Remove an installed model")
    async def delete(name: str, request: Request) -> dict[str, str]:
        """Delete the model's config and files, and drop it from the warm cache."""
        state = server_state(request)
        await run_in_threadpool(state.gallery.delete, name)
        state.models.evict(name)
        return {"message": f"model {name} deleted"}

    return router
