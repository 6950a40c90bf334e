"""Slowloris at small scale against a live uvicorn with the limited protocol, and the accept-error log filter."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from server_helpers import LOOPBACK, WAIT_SECONDS

from localai_sd.server.app import create_app
from localai_sd.server.http_limits import AcceptErrorFilter, server_config
from localai_sd.settings import Settings

HEADER_TIMEOUT = 0.5
MAX_CONNECTIONS = 20
SLOW_CLIENTS = 50


class QuietServer(uvicorn.Server):
    """uvicorn without signal handlers (it runs in a test thread)."""

    def install_signal_handlers(self) -> None:
        """Leave signals to pytest."""


@contextmanager
def limited_server(tmp_path: Path) -> Iterator[int]:
    """``local-ai serve``'s uvicorn config (limited protocol) on a loopback port; yields the port."""
    settings = Settings(models_path=tmp_path / "models", image_path=tmp_path / "images", galleries=())
    config = server_config(create_app(settings), LOOPBACK, 0, HEADER_TIMEOUT, MAX_CONNECTIONS)
    config.log_level = "warning"
    server = QuietServer(config)
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(WAIT_SECONDS)
        sock.close()


def slow_socket(port: int, head: bytes) -> socket.socket:
    """A connection that sent ``head`` (an unfinished request) and nothing more."""
    sock = socket.create_connection((LOOPBACK, port), timeout=WAIT_SECONDS)
    sock.sendall(head)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server has closed ``sock`` (EOF or reset) within WAIT_SECONDS."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_slowloris_connections_are_shed_and_timed_out_while_requests_are_served(tmp_path: Path) -> None:
    with limited_server(tmp_path) as port:
        partial = f"GET /healthz HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nX-Slow: 1\r\n".encode()
        slow = [slow_socket(port, partial) for _ in range(SLOW_CLIENTS)]
        try:
            started = time.monotonic()
            # A normal request is answered at once: it sheds the oldest idle connection, never waits.
            assert httpx.get(f"http://{LOOPBACK}:{port}/healthz", timeout=5).status_code == 200
            # Past the cap the oldest waiting connections were closed at once (shed).
            shed = [sock for sock in slow if select.select([sock], [], [], 0)[0]]
            assert len(shed) >= SLOW_CLIENTS - MAX_CONNECTIONS
            # A trickling head does not extend the deadline: every other slow connection is closed too.
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-More: 1\r\n")
            assert all(closed_by_server(sock) for sock in slow)
            assert time.monotonic() - started < WAIT_SECONDS / 2
        finally:
            for sock in slow:
                sock.close()


def test_a_stalled_body_is_closed_and_a_moving_one_is_not(tmp_path: Path) -> None:
    with limited_server(tmp_path) as port:
        head = (
            f"POST /v1/images/generations HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{"
        ).encode()
        stalled = slow_socket(port, head)
        assert closed_by_server(stalled)
        stalled.close()
        body = b'{"prompt": "x", "size": "9x9", "n": 1}  '
        assert len(body) == 40
        moving = slow_socket(port, head.removesuffix(b"{"))
        for start in range(0, 40, 10):  # 4 chunks, each inside the pause limit: 2x the head timeout in total
            moving.sendall(body[start : start + 10])
            time.sleep(HEADER_TIMEOUT / 2)
        answer = moving.recv(1024)
        moving.close()
        # The whole body arrived and was parsed: the answer is about its content (no model installed here).
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 404")) and b'"error"' in answer, answer


def test_accept_errors_are_logged_once_per_interval_with_a_count() -> None:
    now = [0.0]
    log_filter = AcceptErrorFilter(interval=10, clock=lambda: now[0])
    emfile = OSError(24, "Too many open files")

    def record(message: str, exc: BaseException | None) -> logging.LogRecord:
        return logging.LogRecord(
            "asyncio", logging.ERROR, __file__, 1, message, (), (type(exc), exc, None) if exc else None
        )

    accept = "socket.accept() out of system resource"
    assert log_filter.filter(record(accept, emfile))
    assert not any(log_filter.filter(record(accept, emfile)) for _ in range(1000))
    assert log_filter.filter(record("an unrelated error", None))
    now[0] = 10.5
    passed = record(accept, emfile)
    assert log_filter.filter(passed) and "1000 more like this" in passed.getMessage()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_header_timeout_and_limit_flags_are_validated(value: str) -> None:
    from localai_sd.cli.serve import build_settings
    from localai_sd.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="--header-timeout"):
        build_settings({}, header_timeout=float(value))
    with pytest.raises(InvalidRequest, match="--limit-concurrency"):
        build_settings({}, limit_concurrency=int(value))
    settings = build_settings(
        {"LIMIT_CONCURRENCY": "7"}, header_timeout=2.5, cors=["https://a.example,https://b.example"]
    )
    assert (settings.limit_concurrency, settings.header_timeout_seconds) == (7, 2.5)
    assert settings.cors_allow_origins == ("https://a.example", "https://b.example")
