"""The OpenAPI document as the server really answers: every status, its body schema and media type.

FastAPI documents a route's 200 and its own 422 (which this server never sends: validation is a
400). ``complete_openapi`` rewrites each operation from one table: the success body, the errors
the middleware can give (401 key, 403 Host/Origin, 413 size, 415 Content-Type), and the errors
the route's own checks give, all with OpenAI's ``ErrorResponse`` body. Schemas live under
``components/schemas`` so every ``$ref`` resolves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from localai_sd.server.middleware import OPEN_PATHS
from localai_sd.server.routes_jobs import JOBS, JobCreated, JobResult
from localai_sd.server.schemas import (
    ApplyBody,
    ApplyResponse,
    ErrorResponse,
    ImageEditFields,
    ImageGenerationBody,
    ImagesResponse,
    MessageResponse,
    ModelList,
    Readiness,
    component_ref,
)

STATE_CHANGING = ("post", "put", "patch", "delete")
REASONS = {
    400: "Invalid request: the message names the parameter and the rule",
    401: "Missing or wrong API key (only when the server has keys)",
    403: "Host not one of the server's names, or a cross-site request (CSRF)",
    404: "No such model, image, job or route",
    409: "The job has not finished yet",
    413: "Body larger than --upload-limit",
    415: "Content-Type not accepted (JSON; a form type only without Origin)",
    429: "Queue full: retry after Retry-After seconds",
    500: "A server fault (a broken model config or an unwritable output dir)",
    502: "A download from a gallery failed",
    503: "Not ready, or a gallery is unreachable",
}
MODELS: tuple[type[BaseModel], ...] = (
    ErrorResponse,
    ImageGenerationBody,
    ImageEditFields,
    ImagesResponse,
    ApplyBody,
    ApplyResponse,
    ModelList,
    MessageResponse,
    Readiness,
    JobCreated,
    JobResult,
)
NO_CONTENT: dict[str, Any] = {}
PNG = {
    m: {"schema": {"type": "string", "contentMediaType": m}}
    for m in ("image/png", "image/jpeg", "image/webp")
}
#: Server-sent events (job events; OpenAI image streaming).
#: Each server-sent event as schemathesis and OpenAPI 3.2 see it: its fields (``event``, ``data``, ``id``).
SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
EVENT_STREAM = {"text/event-stream": {"schema": SSE_EVENT}}


@dataclass(frozen=True)
class RouteDoc:
    """What one operation answers: the success content and its own error statuses."""

    ok: dict[str, Any] | None = None
    errors: tuple[int, ...] = ()


def json_content(model: type[BaseModel]) -> dict[str, Any]:
    """``application/json`` content with ``model``'s schema."""
    return {"application/json": {"schema": component_ref(model)}}


IMAGES = RouteDoc({**json_content(ImagesResponse), **EVENT_STREAM}, (400, 404, 429, 500))
#: Variations have no streaming (OpenAI's CreateImageVariationRequest).
VARIATIONS = RouteDoc(json_content(ImagesResponse), (400, 404, 429, 500))
#: (method, path) → its doc; operations not listed get only the generic statuses.
ROUTES: dict[tuple[str, str], RouteDoc] = {
    ("get", "/healthz"): RouteDoc(NO_CONTENT),
    ("head", "/healthz"): RouteDoc(NO_CONTENT),
    ("get", "/readyz"): RouteDoc(json_content(Readiness)),
    ("head", "/readyz"): RouteDoc(NO_CONTENT),
    ("post", "/v1/images/generations"): IMAGES,
    ("post", "/images/generations"): IMAGES,
    ("post", "/v1/images/edits"): IMAGES,
    ("post", "/images/edits"): IMAGES,
    ("post", "/v1/images/variations"): VARIATIONS,
    ("post", "/images/variations"): VARIATIONS,
    ("get", "/generated-images/{name}"): RouteDoc(PNG, (404,)),
    ("get", "/v1/models"): RouteDoc(json_content(ModelList)),
    ("get", "/models"): RouteDoc(json_content(ModelList)),
    ("post", "/models/apply"): RouteDoc(json_content(ApplyResponse), (400, 404, 429, 500, 502, 503)),
    ("get", "/models/jobs/{job_id}"): RouteDoc(None, (404,)),
    ("get", "/models/available"): RouteDoc(None, (400, 502, 503)),
    ("post", "/models/delete/{name}"): RouteDoc(json_content(MessageResponse), (400, 404, 500)),
    ("post", JOBS): RouteDoc(json_content(JobCreated), (400, 404, 429, 500)),
    ("get", JOBS + "/{job_id}"): RouteDoc(None, (404,)),
    ("get", JOBS + "/{job_id}/events"): RouteDoc(EVENT_STREAM, (400, 404)),
    ("post", JOBS + "/{job_id}/cancel"): RouteDoc(None, (404,)),
    ("get", JOBS + "/{job_id}/result"): RouteDoc(json_content(JobResult), (400, 404, 409, 500)),
}


def error_statuses(method: str, path: str, own: tuple[int, ...]) -> list[int]:
    """Every error status of an operation: the middleware's, then its own."""
    statuses = {403, *own}
    if path not in OPEN_PATHS:
        statuses.add(401)
    if method in STATE_CHANGING:
        statuses.update((400, 413, 415))
    if "{" in path:
        statuses.add(404)
    if (method, path) == ("get", "/readyz"):
        statuses.add(503)
    return sorted(statuses)


def responses_for(method: str, path: str, generated: dict[str, Any]) -> dict[str, Any]:
    """The ``responses`` object of one operation."""
    doc = ROUTES.get((method, path), RouteDoc())
    ok = generated.get("200", {"description": "OK"})
    if doc.ok is not None:
        ok = {"description": ok.get("description", "OK"), **({"content": doc.ok} if doc.ok else {})}
    responses: dict[str, Any] = {"200": ok}
    for status in error_statuses(method, path, doc.errors):
        if (method, path, status) == ("get", "/readyz", 503):
            responses["503"] = {"description": "Not started yet", "content": json_content(Readiness)}
        else:
            responses[str(status)] = {"description": REASONS[status], "content": json_content(ErrorResponse)}
    return responses


def component_schemas() -> dict[str, Any]:
    """The JSON schemas of MODELS and everything they use, keyed by name, refs to components."""
    _, top = models_json_schema(
        [(model, "serialization" if model is not ApplyBody else "validation") for model in MODELS],
        ref_template="#/components/schemas/{model}",
    )
    return dict(top.get("$defs", {}))


def complete_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """The generated document with true responses, no 422, and every schema under components."""
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            operation["responses"] = responses_for(method, path, operation.get("responses", {}))
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(component_schemas())
    return document


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the completed document (built once, on first use)."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        """The completed document."""
        if not getattr(app, "completed_openapi", False):
            app.openapi_schema = complete_openapi(generate())
            app.completed_openapi = True  # type: ignore[attr-defined]
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
