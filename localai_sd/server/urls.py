"""Absolute public URLs: from ``--base-url``, or from the request and its proxy headers.

LocalAI built image URLs from the request scheme and Host only, so behind a TLS proxy or
under a sub-path they were wrong (REFERENCE.md §4 #10). Here ``X-Forwarded-Proto``,
``X-Forwarded-Host`` and ``X-Forwarded-Prefix`` are honoured (the de-facto proxy headers).
"""

from __future__ import annotations

import re

from starlette.requests import Request

SCHEMES = ("http", "https")
#: A host[:port] or [ipv6]:port, nothing that could inject a path or another URL.
HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")
PREFIX_RE = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


def first_value(header: str | None) -> str:
    """The first entry of a comma-separated proxy header, stripped."""
    return header.split(",")[0].strip() if header else ""


def normalise_prefix(prefix: str) -> str:
    """A path prefix as ``/a/b`` (no trailing slash), or ``""`` when empty or unsafe."""
    prefix = "/" + prefix.strip().strip("/") if prefix.strip().strip("/") else ""
    return prefix if PREFIX_RE.match(prefix) else ""


def public_base_url(request: Request, base_url: str | None) -> str:
    """The server's public base URL, without a trailing slash."""
    if base_url:
        return base_url.rstrip("/")
    headers = request.headers
    scheme = first_value(headers.get("x-forwarded-proto")).lower()
    if scheme not in SCHEMES:
        scheme = request.url.scheme
    host = first_value(headers.get("x-forwarded-host"))
    if not HOST_RE.match(host):
        host = headers.get("host", "")
    if not HOST_RE.match(host):
        server = request.scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    prefix = normalise_prefix(first_value(headers.get("x-forwarded-prefix")))
    prefix = prefix or normalise_prefix(request.scope.get("root_path", ""))
    return f"{scheme}://{host}{prefix}"


def absolute_url(request: Request, base_url: str | None, path: str) -> str:
    """``path`` (starting with ``/``) made absolute against the public base URL."""
    return public_base_url(request, base_url) + path
