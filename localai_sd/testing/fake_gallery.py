"""A loopback HTTP server for gallery tests: serves a directory (plus extra routes) with injectable faults.

Stdlib ``ThreadingHTTPServer`` bound to 127.0.0.1 on an ephemeral port. Faults per URL path:
an HTTP status returned N times (or always), the connection cut after K body bytes, a delay before
the body; Range requests (RFC 9110 §14) can be switched off. Every request is recorded.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

#: ``Range: bytes=START-`` or ``bytes=START-END`` (single range only).
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
LOOPBACK = "127.0.0.1"
#: How often the serving thread checks for shutdown (stdlib default 0.5 s slows teardown).
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class RequestRecord:
    """One request the server saw: method, path and its Range header (or None)."""

    method: str
    path: str
    range: str | None


@dataclass
class Fault:
    """A fault on one path; ``times`` None means every request, else it is consumed per request."""

    status: int | None = None
    cut_after: int | None = None
    delay: float = 0.0
    times: int | None = None


@dataclass
class _State:
    """Mutable server state shared with handler threads, guarded by ``lock``."""

    root: Path | None
    routes: dict[str, bytes | Path] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    range_support: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_fault(self, path: str) -> Fault | None:
        """The first active fault for ``path``, consuming one use of it."""
        with self.lock:
            for fault in self.faults.get(path, []):
                if fault.times is None:
                    return fault
                if fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    def body(self, path: str) -> bytes | None:
        """The bytes served at ``path``: an explicit route, else a file under ``root``, else None."""
        with self.lock:
            route = self.routes.get(path)
        if isinstance(route, bytes):
            return route
        if isinstance(route, Path):
            return route.read_bytes()
        if self.root is None:
            return None
        root = self.root.resolve()
        target = (root / path.lstrip("/")).resolve()
        if root not in target.parents or not target.is_file():
            return None
        return target.read_bytes()


def make_handler(state: _State) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``state``."""

    class Handler(BaseHTTPRequestHandler):
        """Serves GET/HEAD from the state's routes and root, applying faults."""

        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Stay quiet in test output."""

        def do_HEAD(self) -> None:
            """Answer HEAD like GET without a body."""
            self.serve(send_body=False)

        def do_GET(self) -> None:
            """Answer GET."""
            self.serve(send_body=True)

        def serve(self, *, send_body: bool) -> None:
            """Apply the path's fault, then send the file (whole or one range)."""
            path = unquote(urlsplit(self.path).path)
            range_header = self.headers.get("Range")
            with state.lock:
                state.requests.append(RequestRecord(self.command, path, range_header))
            fault = state.take_fault(path)
            if fault is not None and fault.delay:
                time.sleep(fault.delay)
            if fault is not None and fault.status is not None:
                self.send_plain(fault.status, f"injected {fault.status}\n".encode())
                return
            data = state.body(path)
            if data is None:
                self.send_plain(404, b"not found\n")
                return
            status, start, end = 200, 0, len(data)
            match = _RANGE.match(range_header or "")
            if state.range_support and match is not None:
                start = int(match.group(1))
                end = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            if state.range_support:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if not send_body:
                return
            body = data[start:end]
            if fault is not None and fault.cut_after is not None:
                self.wfile.write(body[: fault.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def send_plain(self, status: int, body: bytes) -> None:
            """Send a short text/plain response."""
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class _QuietServer(ThreadingHTTPServer):
    """A threading HTTP server that ignores clients hanging up (resets, broken pipes) instead of printing."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Drop connection errors caused by clients going away; report anything else as usual."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class FakeGallery:
    """A loopback HTTP server serving ``root`` and explicit routes, with controllable faults.

    Use as a context manager; ``url`` is ``http://127.0.0.1:<port>``.
    """

    def __init__(self, root: Path | None = None, *, range_support: bool = True):
        """Create (not start) a server for ``root`` (may be None when only routes are used)."""
        self._state = _State(root=root, range_support=range_support)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server, without a trailing slash."""
        if self._server is None:
            raise RuntimeError("FakeGallery is not running")
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def start(self) -> FakeGallery:
        """Bind 127.0.0.1:0 and serve in a daemon thread."""
        server = _QuietServer((LOOPBACK, 0), make_handler(self._state))
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name="fake-gallery",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGallery:
        """Start the server."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the server."""
        self.stop()

    def add(self, path: str, content: bytes | Path) -> str:
        """Serve ``content`` (bytes, or a file read per request) at URL ``path``; return its full URL."""
        path = "/" + path.lstrip("/")
        with self._state.lock:
            self._state.routes[path] = content
        return self.url + path

    def fail(self, path: str, status: int, times: int | None = None) -> None:
        """Answer ``path`` with ``status`` the next ``times`` requests (None: always)."""
        self._add_fault(path, Fault(status=status, times=times))

    def cut(self, path: str, after_bytes: int, times: int | None = 1) -> None:
        """Close the connection after ``after_bytes`` body bytes, the next ``times`` requests."""
        self._add_fault(path, Fault(cut_after=after_bytes, times=times))

    def slow(self, path: str, delay: float, times: int | None = None) -> None:
        """Wait ``delay`` seconds before answering ``path``, the next ``times`` requests (None: always)."""
        self._add_fault(path, Fault(delay=delay, times=times))

    def set_range_support(self, enabled: bool) -> None:
        """Switch Range handling on or off (off: always 200 with the whole body)."""
        with self._state.lock:
            self._state.range_support = enabled

    def _add_fault(self, path: str, fault: Fault) -> None:
        """Register a fault for a URL path."""
        path = "/" + path.lstrip("/")
        with self._state.lock:
            self._state.faults.setdefault(path, []).append(fault)

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of every request seen so far."""
        with self._state.lock:
            return list(self._state.requests)

    def count(self, path: str, method: str = "GET") -> int:
        """How many ``method`` requests ``path`` received."""
        path = "/" + path.lstrip("/")
        return sum(1 for r in self.requests if r.path == path and r.method == method)


#: GitHub owner/repo names of the fake gallery tree (served under ``/raw/`` through a mirror).
GALLERY_REPO = "acme/gallery"
ASSETS_REPO = "acme/assets"
RAW_GITHUB = "https://raw.githubusercontent.com/"


@dataclass(frozen=True)
class TinyGallery:
    """A fake gallery tree on disk: ``github:`` URLs of its index and model file, and the asset digests."""

    root: Path
    name: str
    index_url: str
    model_url: str
    #: {filename relative to the models dir: sha256}
    digests: dict[str, str]

    def mirrors(self, server: FakeGallery) -> tuple[tuple[str, str], ...]:
        """The LOCALAI_MIRRORS pairs sending raw.githubusercontent.com to ``server``'s ``/raw/``."""
        return ((RAW_GITHUB, f"{server.url}/raw/"),)

    def asset_path(self, filename: str) -> str:
        """The URL path (on the fake server) of one asset file."""
        return f"/raw/{ASSETS_REPO}/main/{filename}"

    def model_path(self) -> str:
        """The URL path (on the fake server) of the model-definition YAML."""
        return f"/raw/{GALLERY_REPO}/main/{self.name}.yaml"


def build_tiny_gallery(root: Path, name: str = "tiny-sd", backend: str = "stablediffusion") -> TinyGallery:
    """Write a GitHub-shaped gallery tree under ``root/raw``: index.yaml, ``<name>.yaml`` and tiny model files."""
    import yaml

    from localai_sd.testing.tiny import build_tiny_assets

    asset_dir = f"{name}_assets"
    digests = build_tiny_assets(
        root / "raw" / ASSETS_REPO / "main" / asset_dir, backend, prefix=f"{asset_dir}/"
    )
    definition = {
        "name": name,
        "license": "test",
        "description": f"tiny {backend} model for tests",
        "config_file": yaml.safe_dump({"backend": backend, "parameters": {"model": asset_dir}}),
        "files": [
            {"filename": f, "sha256": sha, "uri": f"{RAW_GITHUB}{ASSETS_REPO}/main/{f}"}
            for f, sha in sorted(digests.items())
        ],
    }
    gallery_dir = root / "raw" / GALLERY_REPO / "main"
    gallery_dir.mkdir(parents=True, exist_ok=True)
    (gallery_dir / f"{name}.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    index = [{"name": name, "url": f"github:{GALLERY_REPO}/{name}.yaml", "license": "test"}]
    (gallery_dir / "index.yaml").write_text(yaml.safe_dump(index, sort_keys=False))
    return TinyGallery(
        root=root,
        name=name,
        index_url=f"github:{GALLERY_REPO}/index.yaml",
        model_url=f"github:{GALLERY_REPO}/{name}.yaml",
        digests=digests,
    )
