"""The install policy's address checks, redirects, the install lock and the partial sweep, on real sockets."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from localai_sd.errors import BlockedSource, Cancelled, DownloadError
from localai_sd.gallery.catalog import open_fetcher
from localai_sd.gallery.guard import InstallPolicy, is_public
from localai_sd.gallery.install import InstallRequest, install_model
from localai_sd.gallery.store import LOCK_NAME, install_lock, sweep_partials
from localai_sd.settings import Settings
from localai_sd.testing.fake_gallery import FakeGallery

#: A second loopback address, treated as "public" by the test policy below.
OTHER_LOOPBACK = "127.0.0.2"
STRICT = InstallPolicy(
    any_local_path=False,
    allow_private_hosts=False,
    allowed_networks=(ipaddress.ip_network(f"{OTHER_LOOPBACK}/32"),),
)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


class Redirector(BaseHTTPRequestHandler):
    """Answers every GET with a 302 to ``target`` + path."""

    target = ""
    seen: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        """Redirect."""
        self.seen.append(self.path)
        self.send_response(302)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def redirector(server: FakeGallery) -> Iterator[tuple[str, list[str]]]:
    """A server on 127.0.0.2 redirecting to the fake gallery on 127.0.0.1."""
    handler = type("Handler", (Redirector,), {"target": server.url, "seen": []})
    httpd = ThreadingHTTPServer((OTHER_LOOPBACK, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://{OTHER_LOOPBACK}:{httpd.server_address[1]}", handler.seen
    httpd.shutdown()
    httpd.server_close()


def test_a_redirect_to_loopback_is_refused(
    redirector: tuple[str, list[str]], server: FakeGallery, tmp_path: Path
) -> None:
    url, seen = redirector
    server.add("/m.yaml", b"name: m\n")
    settings = Settings(models_path=tmp_path / "models", download_retries=0)
    with pytest.raises(BlockedSource, match="private"):
        install_model(InstallRequest(url=f"{url}/m.yaml"), settings, guard=STRICT)
    assert seen == ["/m.yaml"]  # the first hop was allowed and fetched...
    assert server.requests == []  # ...the redirect to 127.0.0.1 never connected


def test_the_trusted_policy_keeps_local_files_and_loopback(server: FakeGallery, tmp_path: Path) -> None:
    doc = tmp_path / "doc.yaml"
    doc.write_text("a: 1\n")
    settings = Settings(models_path=tmp_path / "models")
    url = server.add("/doc.yaml", b"b: 2\n")
    with open_fetcher(settings) as fetcher:
        assert fetcher.document(doc.as_uri(), "doc") == {"a": 1}
        assert fetcher.document(url, "doc") == {"b": 2}


def test_a_failed_install_leaves_no_lock_file(server: FakeGallery, tmp_path: Path) -> None:
    settings = Settings(models_path=tmp_path / "models", download_retries=0)
    server.add(
        "/m.yaml",
        b'name: m\nconfig_file: "backend: stablediffusion"\nfiles:\n- filename: m/x\n  uri: '
        + server.url.encode()
        + b"/missing\n",
    )
    with pytest.raises(DownloadError):
        install_model(InstallRequest(url=f"{server.url}/m.yaml"), settings)
    assert not (settings.models_path / LOCK_NAME).exists()


def test_the_lock_excludes_and_sweep_waits_for_it(tmp_path: Path) -> None:
    stale = tmp_path / "a" / "b.bin.partial"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    with install_lock(tmp_path, None):
        assert sweep_partials(tmp_path) == 0  # an install is running: its partials are not stale
        with pytest.raises(Cancelled), install_lock(tmp_path, lambda: True):
            pass
        assert stale.exists()
    assert not (tmp_path / LOCK_NAME).exists()
    assert sweep_partials(tmp_path) == 1 and not stale.exists()
    assert not (tmp_path / LOCK_NAME).exists()
