"""Pure ASGI guards against other web pages: DNS rebinding (``Host``) and CSRF (``Origin``, Content-Type).

A page the user visits can send requests to ``127.0.0.1`` in two ways:

- **Rebinding.** Its own name resolves to 127.0.0.1 after the page loads; the browser then treats the
  server as same-origin with the page, but still sends ``Host: attacker.example``. ``HostGuard``
  answers only Host names that are the server's: localhost names, IP literals (a rebinding needs a
  DNS name), the address the connection came in on, and ``--allowed-hosts``.
- **Cross-site requests.** A form POST needs no CORS preflight. Browsers send ``Origin`` on every
  cross-site POST, so ``CsrfGuard`` refuses a state-changing request whose ``Origin`` is neither the
  server itself nor listed in ``--cors``, and one marked ``Sec-Fetch-Site: cross-site``. JSON routes
  also want ``application/json`` from browsers; a request with no ``Origin`` (curl, SDKs) may still
  send a form Content-Type, as LocalAI's documented ``curl -d`` examples do. Only routes whose
  OpenAPI operation declares ``multipart/form-data`` take multipart bodies.

Ollama refuses unknown browser origins and checks Host the same way (its DNS-rebinding fixes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from localai_sd.server.errors import INVALID_REQUEST, error_body
from localai_sd.server.middleware import ASGIApp, Receive, Scope, Send, send_error

#: Methods that change state: checked for Origin and Content-Type.
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
DEFAULT_PORTS = {"http": "80", "https": "443"}
ANY = "*"


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes), decoded as latin-1, or None."""
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def split_host(host: str) -> tuple[str, str | None]:
    """``Host`` as (lower-case name without a trailing dot, port or None); IPv6 without brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest.removeprefix(":") or None
    name, sep, port = host.rpartition(":")
    if not sep or ":" in name:
        return host.rstrip("."), None
    return name.rstrip("."), port or None


def is_ip_literal(name: str) -> bool:
    """True for an IPv4 or IPv6 address literal."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_local_name(name: str) -> bool:
    """``localhost`` and its subdomains (RFC 6761: they always resolve to loopback)."""
    return name == "localhost" or name.endswith(".localhost")


def host_allowed(host: str | None, allowed: Iterable[str], server: Any = None) -> bool:
    """Whether a ``Host`` header names this server (port ignored: a rebinding keeps the port).

    Accepted: no Host (not a browser), localhost names, IP literals, the local address the
    connection arrived on (``scope["server"]``), the ``allowed`` names, or anything if ``*`` is listed.
    """
    names = {a.strip().lower().rstrip(".") for a in allowed}
    if ANY in names or not host:
        return True
    name, _ = split_host(host)
    if is_local_name(name) or is_ip_literal(name):
        return True
    if server and server[0] is not None and name == str(server[0]).lower():
        return True
    return name in names


def normalise_netloc(netloc: str, scheme: str) -> str:
    """``host[:port]`` lower-case, without the scheme's default port."""
    name, port = split_host(netloc)
    shown = f"[{name}]" if ":" in name else name
    return shown if port in (None, DEFAULT_PORTS.get(scheme)) else f"{shown}:{port}"


def normalise_origin(origin: str) -> str:
    """An origin as ``scheme://host[:port]`` (default port dropped); ``""`` if it is not http(s)."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        return ""
    return f"{parts.scheme}://{normalise_netloc(parts.netloc, parts.scheme)}"


def same_origin(origin: str, hosts: Iterable[str | None]) -> bool:
    """Whether ``origin`` is the server itself: its host[:port] equals one of ``hosts``."""
    normal = normalise_origin(origin)
    if not normal:
        return False
    scheme, _, netloc = normal.partition("://")
    return any(h and normalise_netloc(h, scheme) == netloc for h in hosts)


def origin_allowed(scope: Scope, allowed: Iterable[str]) -> bool:
    """A state-changing request from no browser, the server's own page, or a listed origin."""
    origin = header(scope, b"origin")
    listed = {normalise_origin(o) for o in allowed if o != ANY}
    if origin is not None and normalise_origin(origin) in listed - {""}:
        return True
    if header(scope, b"sec-fetch-site") == "cross-site":
        return False
    if origin is None:
        return True
    return same_origin(origin, (header(scope, b"host"), header(scope, b"x-forwarded-host")))


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower-case, without parameters."""
    return (content_type or "").split(";")[0].strip().lower()


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (a non-zero Content-Length, or chunked)."""
    length = header(scope, b"content-length")
    return header(scope, b"transfer-encoding") is not None or (length is not None and length.strip() != "0")


def content_type_allowed(scope: Scope, multipart: bool) -> bool:
    """JSON always; multipart only where declared; form or none only without ``Origin`` (curl)."""
    kind = media_type(header(scope, b"content-type"))
    if kind == JSON or (kind.startswith("application/") and kind.endswith("+json")):
        return True
    if kind == MULTIPART:
        return multipart
    if kind == "" and not has_body(scope):
        return True
    return kind in ("", FORM) and header(scope, b"origin") is None


class HostGuard:
    """403 for a ``Host`` that is not one of the server's names (defeats DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...]):
        """Wrap ``app``; ``allowed_hosts`` are names accepted besides the built-in ones."""
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check Host, then pass the request on."""
        host = header(scope, b"host")
        if scope["type"] == "http" and not host_allowed(host, self.allowed_hosts, scope.get("server")):
            message = (
                f"host {host!r} is not one of this server's names: use localhost or an IP address, "
                "or list the name with --allowed-hosts (ALLOWED_HOSTS)"
            )
            body = error_body(message, INVALID_REQUEST, None, "host_not_allowed")
            await send_error(send, 403, body, {"x-should-retry": "false"})
            return
        await self.app(scope, receive, send)


class CsrfGuard:
    """403 for a state-changing request from a foreign page, 415 for a body type the route does not take."""

    def __init__(
        self, app: ASGIApp, allowed_origins: tuple[str, ...], multipart_paths: Callable[[], frozenset[str]]
    ):
        """Wrap ``app``; ``multipart_paths`` lists the paths that declare multipart bodies (read lazily)."""
        self.app = app
        self.allowed_origins = allowed_origins
        self.multipart_paths = multipart_paths
        self.multipart: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check Origin / Sec-Fetch-Site, then the Content-Type, on state-changing requests."""
        if scope["type"] != "http" or scope.get("method") not in STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        headers = {"x-should-retry": "false"}
        if not origin_allowed(scope, self.allowed_origins):
            origin = header(scope, b"origin")
            message = (
                f"cross-site request refused: origin {origin!r} may not change this server's state; "
                "list a trusted web UI's exact origin with --cors (CORS_ALLOW_ORIGINS)"
            )
            await send_error(
                send, 403, error_body(message, INVALID_REQUEST, None, "cross_origin_forbidden"), headers
            )
            return
        if self.multipart is None:
            self.multipart = self.multipart_paths()
        multipart = scope.get("path") in self.multipart
        if not content_type_allowed(scope, multipart):
            wanted = f"{JSON} or {MULTIPART}" if multipart else JSON
            message = (
                f"Content-Type {header(scope, b'content-type')!r} is not accepted here: send {wanted} "
                "(a form type is accepted only from clients that send no Origin, such as curl)"
            )
            await send_error(
                send, 415, error_body(message, INVALID_REQUEST, None, "unsupported_media_type"), headers
            )
            return
        await self.app(scope, receive, send)


def declared_multipart_paths(openapi: dict[str, Any]) -> frozenset[str]:
    """Paths whose operations declare a ``multipart/form-data`` request body in the OpenAPI document."""
    return frozenset(
        path
        for path, operations in openapi.get("paths", {}).items()
        for operation in operations.values()
        if isinstance(operation, dict) and MULTIPART in operation.get("requestBody", {}).get("content", {})
    )
