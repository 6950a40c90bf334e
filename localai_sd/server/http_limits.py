"""Connection limits uvicorn lacks: a request-head deadline, a body pause limit, a connection cap, quiet accept errors.

Slowloris clients open connections and send a request head a byte at a time. uvicorn has a
keep-alive timeout but none for the head, so each such connection holds a file descriptor for
ever; past ``ulimit -n`` the server accepts nothing and asyncio logs every failed ``accept``.

``limited_protocol`` subclasses uvicorn's HTTP protocol (h11 or httptools) per connection:

- **head deadline**: the request line and headers must arrive within ``header_timeout`` seconds of
  the connection opening (or of the previous response ending); trickling bytes does not extend it;
- **body pauses**: while a body is being read, ``header_timeout`` seconds without a byte close the
  connection (a slow upload that keeps moving is fine; a paused read is the app's choice, not a pause);
- **connection cap**: past ``max_connections`` open connections, the oldest connection still waiting
  for a request head is closed to make room (none waiting: the new one is), so descriptors never
  run out and a fresh request is served at once.

``AcceptErrorFilter`` lets one "Too many open files" log record through per interval, with a count.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

import uvicorn

#: Descriptors left for the listening socket, model files, logs and threads when deriving the cap.
RESERVED_FILES = 128
MIN_CONNECTIONS = 16
#: errno values of an ``accept`` that failed for lack of resources.
ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_LOG_INTERVAL_SECONDS = 10.0
HEAD, BODY, APP = "head", "body", "app"


def default_max_connections() -> int:
    """The connection cap for this process: its open-file limit less a reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(MIN_CONNECTIONS, soft - RESERVED_FILES)


def base_protocol() -> type[asyncio.Protocol]:
    """uvicorn's "auto" HTTP protocol: httptools when installed, else h11."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    return HttpToolsProtocol


def phase(cycle: Any) -> str:
    """What a connection waits for: a request head (no request in flight), body bytes, or the app."""
    if cycle is None or cycle.response_complete:
        return HEAD
    return BODY if cycle.more_body else APP


def limited_protocol(base: type[Any], header_timeout: float, max_connections: int) -> type[asyncio.Protocol]:
    """``base`` with the head deadline, body pause limit and connection cap of this module."""

    class LimitedProtocol(base):  # type: ignore[valid-type,misc]
        """One HTTP connection with deadlines; uvicorn constructs it per accepted socket."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            """uvicorn's arguments; no timer yet."""
            super().__init__(*args, **kwargs)
            self.deadline: asyncio.TimerHandle | None = None
            self.watching: tuple[str, Any] | None = None
            self.opened = 0.0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            """Make room if at the cap, then start the head deadline."""
            super().connection_made(transport)
            self.opened = self.loop.time()
            shed_for(self, max_connections)
            self.watch()

        def connection_lost(self, exc: Exception | None) -> None:
            """Drop the timer."""
            self.cancel_deadline()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            """Parse as uvicorn does, then move the deadline to the new phase."""
            super().data_received(data)
            self.watch()

        def on_response_complete(self) -> None:
            """The next request head has ``header_timeout`` seconds from now."""
            super().on_response_complete()
            self.watch()

        def waiting_for_head(self) -> bool:
            """True while no request is in flight (a candidate to shed)."""
            return phase(self.cycle) == HEAD and not self.transport.is_closing()

        def cancel_deadline(self) -> None:
            """Stop the timer."""
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def watch(self) -> None:
            """Arm the timer for the current phase: fixed for a head, from the last byte for a body."""
            if self.transport is None or self.transport.is_closing():
                return
            current = (phase(self.cycle), self.cycle)
            if current[0] == HEAD and current == self.watching:
                return  # trickled head bytes do not extend the deadline
            self.cancel_deadline()
            self.watching = current
            if current[0] != APP:
                self.deadline = self.loop.call_later(header_timeout, self.expire, current)

        def expire(self, watched: tuple[str, Any]) -> None:
            """Close the connection if it is still in the phase the timer watched."""
            self.deadline = None
            if self.transport.is_closing() or (phase(self.cycle), self.cycle) != watched:
                return
            if watched[0] == BODY and self.flow.read_paused:
                self.watching = None
                self.watch()  # the app is not reading: not the client's pause
                return
            self.transport.close()

    LimitedProtocol.__name__ = f"Limited{base.__name__}"
    return LimitedProtocol


def shed_for(new: Any, max_connections: int) -> None:
    """Past the cap, close the oldest connection waiting for a request head (or ``new`` if none waits)."""
    if len(new.connections) <= max_connections:
        return
    waiting = [c for c in new.connections if c is not new and getattr(c, "waiting_for_head", lambda: False)()]
    victim = min(waiting, key=lambda c: c.opened) if waiting else new
    victim.cancel_deadline()
    victim.transport.close()


def is_accept_error(record: logging.LogRecord) -> bool:
    """A log record about ``accept`` failing for lack of descriptors or memory."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, OSError) and exc.errno in ACCEPT_ERRNOS:
        return True
    return "Too many open files" in record.getMessage()


class AcceptErrorFilter(logging.Filter):
    """Pass one accept-error record per ``interval`` seconds, telling how many were dropped since."""

    def __init__(
        self, interval: float = ACCEPT_LOG_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        """Rate-limit to one record per ``interval`` seconds of ``clock``."""
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.last: float | None = None
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """False for an accept error inside the interval; the next one passed carries the count."""
        if not is_accept_error(record):
            return True
        now = self.clock()
        if self.last is not None and now - self.last < self.interval:
            self.dropped += 1
            return False
        if self.dropped and self.last is not None:
            since = now - self.last
            record.msg = f"{record.getMessage()} ({self.dropped} more like this in the last {since:.0f} s)"
            record.args = ()
        self.last, self.dropped = now, 0
        return True


#: Loggers that report failed accepts: asyncio's loop, and uvicorn's error log.
ACCEPT_LOGGERS = ("asyncio", "uvicorn.error")


def quiet_accept_errors(interval: float = ACCEPT_LOG_INTERVAL_SECONDS) -> AcceptErrorFilter:
    """Attach one ``AcceptErrorFilter`` to the loggers that report failed accepts; returns it."""
    log_filter = AcceptErrorFilter(interval)
    for name in ACCEPT_LOGGERS:
        logging.getLogger(name).addFilter(log_filter)
    return log_filter


def server_config(
    app: Any, host: str, port: int, header_timeout: float, max_connections: int | None
) -> uvicorn.Config:
    """uvicorn's config with the limited protocol; proxy headers are the app's job (``ForwardedHeadersMiddleware``)."""
    protocol = limited_protocol(base_protocol(), header_timeout, max_connections or default_max_connections())
    return uvicorn.Config(app, host=host, port=port, log_level="info", proxy_headers=False, http=protocol)
