"""The studio page: ``/`` and ``/studio/<file>`` served from package data (``localai_sd/web``).

The page is public static content, so this ASGI layer answers it before the API-key check (the
page then asks for a key when the API answers 401). Only the files shipped in the package are
served, read once at startup; a strict Content-Security-Policy allows nothing but this origin.
"""

from __future__ import annotations

from importlib import resources

from localai_sd.server.middleware import ASGIApp, Receive, Scope, Send

PREFIX = "/studio/"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
)


def load_files() -> dict[str, tuple[bytes, str]]:
    """Every shipped web file by URL path: ``/`` is ``index.html``, the rest under ``/studio/``."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("localai_sd.web").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES:
            files[PREFIX + entry.name] = (entry.read_bytes(), TYPES[suffix])
    if PREFIX + "index.html" in files:
        files["/"] = files[PREFIX + "index.html"]
    return files


class StudioFiles:
    """Answer GET/HEAD for the studio's files; pass everything else on."""

    def __init__(self, app: ASGIApp, enabled: bool = True):
        """Wrap ``app``; with ``enabled`` False nothing is served."""
        self.app = app
        self.files = load_files() if enabled else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a known file, else call the app."""
        found = self.files.get(scope.get("path", "")) if scope["type"] == "http" else None
        if found is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        body, content_type = found
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            *SECURITY_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})
