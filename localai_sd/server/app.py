"""``create_app(settings)``: the OpenAI-compatible image server, one FastAPI app per call, no module state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from localai_sd.errors import BackendUnavailable, LocalAISDError, OutputError
from localai_sd.gallery.store import models_root, sweep_partials
from localai_sd.models import ModelConfig
from localai_sd.server import routes_images, routes_jobs, routes_models
from localai_sd.server.csrf import CsrfGuard, HostGuard, declared_multipart_paths
from localai_sd.server.docs import add_docs_routes
from localai_sd.server.errors import (
    INVALID_REQUEST,
    SERVER_ERROR,
    STATUS_CLIENT_CLOSED,
    ApiError,
    error_response,
    from_library_error,
    validation_error,
)
from localai_sd.server.gallery_ops import GalleryOps, LibraryGallery
from localai_sd.server.images import ImageStore
from localai_sd.server.installs import InstallJobs
from localai_sd.server.middleware import ApiKeyMiddleware, BodyLimitMiddleware, ForwardedHeadersMiddleware
from localai_sd.server.models_cache import Loader, ModelCache, Pipeline
from localai_sd.server.openapi import install_openapi
from localai_sd.server.shutdown import begin_shutdown, on_first_signal
from localai_sd.server.state import ServerState
from localai_sd.server.studio import StudioFiles
from localai_sd.settings import Settings

LOG = logging.getLogger("localai_sd.server")
#: Longest pause between two sweeps of expired images, seconds.
MAX_CLEANUP_INTERVAL_SECONDS = 60.0
#: OpenAI error codes for plain HTTP errors raised by routing.
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def default_loader(settings: Settings) -> Loader:
    """Load real pipelines: ``StableDiffusion.load`` with the configured thread count."""

    def load(config: ModelConfig) -> Pipeline:
        """Load the nets of ``config`` once."""
        from localai_sd.pipeline.pipeline import StableDiffusion

        return StableDiffusion.load(
            config,
            threads=settings.threads,
            low_memory=settings.low_memory,
            max_prompt_chunks=settings.max_prompt_chunks,
        )

    return load


def build_state(settings: Settings, loader: Loader | None, gallery: GalleryOps | None) -> ServerState:
    """The per-app state: image store, warm-model cache, queues and gallery."""
    return ServerState(
        settings=settings,
        images=ImageStore(settings.resolved_image_path, settings.image_ttl_seconds),
        models=ModelCache(loader or default_loader(settings), settings.max_loaded_models),
        gallery=gallery or LibraryGallery(settings),
        installs=InstallJobs.from_settings(settings),
    )


async def sweep_images(state: ServerState) -> None:
    """Delete expired images forever, at an interval well under the TTL."""
    interval = max(1.0, min(MAX_CLEANUP_INTERVAL_SECONDS, state.settings.image_ttl_seconds / 4))
    while True:
        await asyncio.sleep(interval)
        try:
            removed = await run_in_threadpool(state.images.cleanup)
        except OSError as exc:
            LOG.warning("image cleanup failed: %s", exc)
        else:
            if removed:
                LOG.info("removed %d expired image(s)", removed)


async def preload_models(state: ServerState) -> None:
    """Install ``--preload-models`` entries before serving; a failure is logged, not fatal."""
    try:
        await run_in_threadpool(state.gallery.preload)
    except LocalAISDError as exc:
        LOG.error("preloading models failed: %s", exc)


async def warm_up(state: ServerState) -> None:
    """Load the default model's nets in the background, then say ready (``/readyz`` answers 503 until then);
    at once with ``--lazy-load`` or when workers run the models (``--redis``)."""
    if not (state.settings.lazy_load or state.settings.redis_url):
        try:
            LOG.info("%s", await run_in_threadpool(state.warm_default_model))
        except Exception:  # a model that fails to load is reported by the request that needs it
            LOG.exception("warming the default model failed")
    state.ready = True


def make_lifespan(state: ServerState) -> Any:
    """Startup: create dirs, preload, start workers and cleanup. Shutdown: cancel and free everything."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Run the server's background parts for the app's lifetime."""
        try:
            state.settings.models_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"models path {state.settings.models_path} cannot be created: {exc}") from None
        if swept := await run_in_threadpool(sweep_partials, models_root(state.settings)):
            LOG.info("removed %d stale *.partial download(s)", swept)
        await run_in_threadpool(state.images.prepare)
        await preload_models(state)
        state.backend.start()
        sweeper = asyncio.create_task(sweep_images(state))
        warmer = asyncio.create_task(warm_up(state))
        unhook = on_first_signal(lambda: begin_shutdown(state.queue, state.installs))
        try:
            yield
        finally:
            unhook()
            state.ready = False
            for task in (sweeper, warmer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await run_in_threadpool(state.backend.stop)
            await run_in_threadpool(state.installs.stop)
            await run_in_threadpool(state.models.close)

    return lifespan


def install_error_handlers(app: FastAPI) -> None:
    """Make every error OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        """A route's ``ApiError``."""
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_library_error(request: Request, exc: Exception) -> Response:
        """A library error, mapped by its type."""
        assert isinstance(exc, LocalAISDError)
        err = from_library_error(exc)
        if err.status >= 500:
            LOG.error("%s: %s", type(exc).__name__, exc)
        return error_response(err)

    async def on_validation(request: Request, exc: Exception) -> Response:
        """FastAPI's request validation, as a 400 naming the field (not its 422 shape)."""
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_error(list(exc.errors())))

    async def on_http(request: Request, exc: Exception) -> Response:
        """Routing errors (404, 405) and the streamed-body 413."""
        assert isinstance(exc, StarletteHTTPException)
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        type_ = INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR
        return error_response(ApiError(exc.status_code, message, type_, code=HTTP_CODES.get(exc.status_code)))

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        """The client went away while sending its body (or was timed out): nobody reads this answer."""
        return error_response(ApiError(STATUS_CLIENT_CLOSED, "the client closed the connection"))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        """A real server fault: 500, and no retry (a retried generation costs minutes)."""
        LOG.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        message = f"internal server error: {type(exc).__name__}: {exc}"
        return error_response(ApiError(500, message, SERVER_ERROR, code="internal_error"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(LocalAISDError, on_library_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)


def add_health_routes(app: FastAPI, state: ServerState) -> None:
    """``/healthz`` (alive) and ``/readyz`` (started; with queue numbers), both open and instant."""

    async def healthz() -> Response:
        """200 while the process serves requests."""
        return Response(status_code=200)

    async def readyz() -> JSONResponse:
        """200 once started (503 before), with running/queued counts and loaded models."""
        try:
            running, waiting = await run_in_threadpool(state.backend.busy)
        except BackendUnavailable as exc:
            body = {"ready": False, "error": str(exc), "loaded_models": state.models.loaded()}
            return JSONResponse(body, status_code=503)
        body = {
            "ready": state.ready,
            "running": running,
            "queued": waiting,
            "loaded_models": state.models.loaded(),
        }
        return JSONResponse(body, status_code=200 if state.ready else 503)

    for path, endpoint, summary in (("/healthz", healthz, "Liveness"), ("/readyz", readyz, "Readiness")):
        for method in ("GET", "HEAD"):
            operation_id = f"{method.lower()}_{path.strip('/')}"
            app.add_api_route(path, endpoint, methods=[method], summary=summary, operation_id=operation_id)


def create_app(
    settings: Settings, *, loader: Loader | None = None, gallery: GalleryOps | None = None
) -> FastAPI:
    """Build the server for ``settings``; ``loader``/``gallery`` replace the real ones (tests)."""
    state = build_state(settings, loader, gallery)
    app = FastAPI(
        title="localai-sd",
        summary="OpenAI-compatible Stable Diffusion image API (LocalAI-compatible), CPU via ncnn",
        lifespan=make_lifespan(state),
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = state
    install_error_handlers(app)
    add_health_routes(app, state)
    add_docs_routes(app)
    app.include_router(routes_images.build_router())
    app.include_router(routes_jobs.build_router())
    app.include_router(routes_models.build_router())
    add_middleware(app, settings)
    install_openapi(app)
    return app


def add_middleware(app: FastAPI, settings: Settings) -> None:
    """Outermost first: proxy headers, Host, CORS, Origin/Content-Type, studio page, API key, body limit."""
    app.add_middleware(BodyLimitMiddleware, limit_mb=settings.upload_limit_mb)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(StudioFiles, enabled=settings.studio)
    app.add_middleware(
        CsrfGuard,
        allowed_origins=settings.cors_allow_origins,
        multipart_paths=lambda: declared_multipart_paths(app.openapi()),
    )
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"] if "*" in settings.cors_allow_origins else list(settings.cors_allow_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(HostGuard, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(ForwardedHeadersMiddleware, trusted=settings.forwarded_allow_ips)
