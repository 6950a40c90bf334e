"""Pure ASGI middleware: API-key auth, the request body limit, and trusted proxy headers.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so that a route still sees the
client's ``http.disconnect`` and can cancel its generation.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from localai_sd.server.errors import AUTHENTICATION, INVALID_REQUEST, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Routes open without a key (LocalAI keeps its health probes open too).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
BYTES_PER_MB = 1024 * 1024


class BodyTooLarge(HTTPException):
    """The streamed request body passed the upload limit (an HTTPException, so FastAPI passes it on)."""

    def __init__(self, message: str):
        """A 413 with ``message``."""
        super().__init__(status_code=413, detail=message)


async def send_error(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    """Send a complete JSON error response."""
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


def bearer_token(scope: Scope) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, else of an ``x-api-key`` header, or None."""
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    for key, value in scope.get("headers", []):
        if key == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


def key_matches(token: str, keys: tuple[str, ...]) -> bool:
    """Compare ``token`` with every key in constant time (``hmac.compare_digest``)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


class ApiKeyMiddleware:
    """With keys set, every route but the health routes needs ``Authorization: Bearer <key>`` or ``x-api-key``."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]):
        """Wrap ``app``, allowing ``keys``."""
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Reject a request without a valid key with an OpenAI-shaped 401."""
        if scope["type"] != "http" or not self.keys or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "OPTIONS":  # CORS preflight never carries credentials
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is not None and key_matches(token, self.keys):
            await self.app(scope, receive, send)
            return
        message = (
            "missing API key: send the header 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            if token is None
            else "invalid API key: the key sent is not one of the server's keys"
        )
        code = "missing_api_key" if token is None else "invalid_api_key"
        headers = {"x-should-retry": "false", "www-authenticate": "Bearer"}
        await send_error(send, 401, error_body(message, AUTHENTICATION, None, code), headers)


class BodyLimitMiddleware:
    """Answer 413 when a body is over the limit, by its Content-Length or by the bytes streamed."""

    def __init__(self, app: ASGIApp, limit_mb: int):
        """Wrap ``app`` with a ``limit_mb`` megabyte body limit (LocalAI's ``--upload-limit``)."""
        self.app = app
        self.limit_mb = limit_mb
        self.limit = limit_mb * BYTES_PER_MB

    def _message(self) -> str:
        """The 413 message."""
        return f"request body is larger than the upload limit of {self.limit_mb} MB (--upload-limit)"

    def _too_large(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The 413 body and headers."""
        body = error_body(self._message(), INVALID_REQUEST, None, "request_too_large")
        return body, {"x-should-retry": "false"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check Content-Length first, then count the body as it streams in."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await send_error(send, 413, *self._too_large())
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            """Pass messages through, counting body bytes."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self._message())
            return message

        async def tracking_send(message: Message) -> None:
            """Remember whether the response has started."""
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, *self._too_large())


def peer_trusted(peer: str | None, trusted: tuple[str, ...]) -> bool:
    """Whether ``peer`` (the connection's address) is in ``trusted``: ``*``, an IP, a CIDR network, or a name."""
    if not trusted or peer is None:
        return False
    if "*" in trusted or peer in trusted:
        return True
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    for item in trusted:
        try:
            if address in ipaddress.ip_network(item, strict=False):
                return True
        except ValueError:
            continue
    return False


def without_forwarded(scope: Scope) -> Scope:
    """A copy of ``scope`` without ``X-Forwarded-*`` and ``Forwarded`` headers."""
    headers = [
        (k, v) for k, v in scope.get("headers", []) if not k.startswith(b"x-forwarded-") and k != b"forwarded"
    ]
    return {**scope, "headers": headers}


class ForwardedHeadersMiddleware:
    """Honour ``X-Forwarded-*`` only from ``--forwarded-allow-ips`` peers; drop them from anyone else.

    From a trusted peer, uvicorn's ``ProxyHeadersMiddleware`` (with the same list) sets the client
    address and scheme, and ``urls.public_base_url`` reads Host and Prefix. Run uvicorn itself with
    ``proxy_headers=False``: its default trusts 127.0.0.1, which on a desktop is every local program.
    """

    def __init__(self, app: ASGIApp, trusted: tuple[str, ...]):
        """Wrap ``app``, trusting the peers in ``trusted``."""
        self.app: ASGIApp = ProxyHeadersMiddleware(app, trusted_hosts=list(trusted)) if trusted else app  # type: ignore[arg-type,assignment]
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Strip proxy headers from untrusted peers, then pass on."""
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if not peer_trusted(client[0] if client else None, self.trusted):
                scope = without_forwarded(scope)
        await self.app(scope, receive, send)
