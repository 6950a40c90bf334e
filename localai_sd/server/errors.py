"""OpenAI-shaped error bodies: library error types mapped to a status, a type, and a retry hint.

The body is OpenAI's ``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}``
(openai-openapi ``Error`` schema). ``x-should-retry: false`` tells the official client not to
retry (openai-python ``_base_client._should_retry``): it retries every 5xx twice otherwise,
and a retried generation costs minutes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from localai_sd.errors import (
    BackendUnavailable,
    Cancelled,
    DownloadError,
    GalleryError,
    InvalidRequest,
    LocalAISDError,
    ModelConfigError,
    ModelNotFound,
    OutOfMemory,
    OutputError,
    QueueFull,
    ShuttingDown,
)

#: OpenAI error ``type`` values (openai-openapi; OpenAI error-codes guide).
INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
RATE_LIMIT = "rate_limit_error"
SERVER_ERROR = "server_error"
#: nginx's "client closed request": the client went away before the answer.
STATUS_CLIENT_CLOSED = 499
#: Seconds a client should wait after a 429 before trying again.
QUEUE_FULL_RETRY_AFTER_SECONDS = 10
#: Seconds a client should wait after a 503 because the job queue (Redis) or its workers are unavailable.
BACKEND_RETRY_AFTER_SECONDS = 5


@dataclass
class ApiError(Exception):
    """An HTTP error with OpenAI's fields; raise it from a route to answer with its body."""

    status: int
    message: str
    type: str = INVALID_REQUEST
    param: str | None = None
    code: str | None = None
    #: False when repeating the same request cannot succeed (sent as ``x-should-retry``).
    retryable: bool = False
    #: Seconds to send as ``Retry-After`` (a 429 always has one).
    retry_after: int | None = None

    def __str__(self) -> str:
        """The human message."""
        return self.message


def error_body(message: str, type_: str, param: str | None, code: str | None) -> dict[str, object]:
    """The OpenAI ``ErrorResponse`` body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(err: ApiError) -> JSONResponse:
    """A JSON response for ``err`` with ``x-should-retry`` (and ``Retry-After`` on 429)."""
    headers = {"x-should-retry": "true" if err.retryable else "false"}
    if err.retry_after is not None:
        headers["retry-after"] = str(err.retry_after)
    elif err.status == 429:
        headers["retry-after"] = str(QUEUE_FULL_RETRY_AFTER_SECONDS)
    if err.status == 401:
        headers["www-authenticate"] = "Bearer"
    return JSONResponse(
        error_body(err.message, err.type, err.param, err.code), status_code=err.status, headers=headers
    )


def status_for(err: LocalAISDError) -> tuple[int, str, bool]:
    """(HTTP status, OpenAI type, retryable) for a library error, by its type."""
    if isinstance(err, QueueFull):
        return 429, RATE_LIMIT, True
    if isinstance(err, ShuttingDown | BackendUnavailable):
        return 503, SERVER_ERROR, True
    if isinstance(err, OutOfMemory):
        return 503, SERVER_ERROR, False
    if isinstance(err, ModelNotFound):
        return 404, INVALID_REQUEST, False
    if isinstance(err, InvalidRequest):
        return 400, INVALID_REQUEST, False
    if isinstance(err, Cancelled):
        return STATUS_CLIENT_CLOSED, INVALID_REQUEST, False
    if isinstance(err, DownloadError):
        return 502, SERVER_ERROR, False
    if isinstance(err, GalleryError):
        return 400, INVALID_REQUEST, False
    if isinstance(err, ModelConfigError | OutputError):
        return 500, SERVER_ERROR, False
    return 500, SERVER_ERROR, False


def from_library_error(err: LocalAISDError) -> ApiError:
    """Map a library error to an ``ApiError`` keeping its message, param and code."""
    status, type_, retryable = status_for(err)
    retry_after = BACKEND_RETRY_AFTER_SECONDS if isinstance(err, BackendUnavailable) else None
    return ApiError(status, err.message, type_, err.param, err.code, retryable, retry_after)


def validation_error(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """A 400 naming the first bad field, from pydantic/FastAPI validation errors."""
    if not errors:
        return ApiError(400, "the request body is invalid")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", first.get("msg", ""))
        return ApiError(400, f"the request body is not valid JSON: {detail}", code="invalid_json")
    if not loc:
        return ApiError(400, f"the request body must be a JSON object: {first.get('msg', '')}")
    param = loc[0]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "missing":
        return ApiError(400, f"{param} is required", param=param)
    shown = first.get("input")
    return ApiError(400, f"{'.'.join(loc)}: {message} (got {shown!r})", param=param)
