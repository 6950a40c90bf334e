"""Offline API docs: ``/docs`` (Swagger UI) and ``/redoc`` load their scripts from this server.

FastAPI's default pages fetch Swagger UI and ReDoc from a CDN, so they are blank offline. The
assets come from the ``fastapi-offline`` package (it bundles Swagger UI, ReDoc and a favicon as
package data); only its files are used, served read-only under ``ASSETS_PATH``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: Where the bundled Swagger UI / ReDoc files are served.
ASSETS_PATH = "/docs/assets"


def assets_dir() -> Path:
    """The directory of the installed ``fastapi_offline`` package's static files."""
    return Path(str(files("fastapi_offline") / "static"))


def add_docs_routes(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` with local assets (build the app with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        """Swagger UI for this server's OpenAPI document."""
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        )

    async def redoc(request: Request) -> HTMLResponse:
        """ReDoc for this server's OpenAPI document, without web fonts."""
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
