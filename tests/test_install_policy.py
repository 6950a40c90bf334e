"""Attacks on ``/models/apply`` and friends, performed against a live server: each must be refused.

The fake gallery listens on loopback, so tests that need it reachable set ``allow_private_hosts``;
everything else runs with the server's defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import install_tiny_model
from server_helpers import live_server, wait_until

from localai_sd.server.app import create_app
from localai_sd.server.images import NAME_RE
from localai_sd.settings import Gallery, Settings
from localai_sd.testing.fake_gallery import FakeGallery

SECRET = b"root:x:0:0:SECRET-LINE-do-not-leak:/root:/bin/bash\n"


def settings_for(tmp_path: Path, **changes: Any) -> Settings:
    """Server settings on a fresh models dir with a tiny ``tinydream`` installed by hand."""
    models = tmp_path / "models"
    if not (models / "tinydream.yaml").exists():
        install_tiny_model(models, "tinydream", "tinydream")
    return Settings(models_path=models, download_retries=0, **changes)


def definition(name: str, files: list[dict[str, str]], **config: Any) -> bytes:
    """A model-definition YAML."""
    config_file = yaml.safe_dump(
        {"backend": "stablediffusion", "parameters": {"model": f"{name}_assets"}, **config}
    )
    return yaml.safe_dump({"name": name, "config_file": config_file, "files": files}).encode()


def job(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /models/apply (must be accepted) and wait for the job's final status."""
    applied = httpx.post(f"{url}/models/apply", json=body)
    assert applied.status_code == 200, applied.text
    status_url = applied.json()["status"]
    wait_until(lambda: httpx.get(status_url).json()["processed"], "install job")
    return httpx.get(status_url).json()


def refused(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /models/apply, expecting a 400 before any job is queued; return the error."""
    response = httpx.post(f"{url}/models/apply", json=body)
    assert response.status_code == 400, response.text
    assert httpx.get(f"{url}/models/jobs").json() == {}
    return response.json()["error"]


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    """A stand-in for /etc/passwd (a private local file)."""
    path = tmp_path / "private" / "passwd"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def fake() -> Iterator[FakeGallery]:
    """An empty loopback gallery server."""
    with FakeGallery() as server:
        yield server


def test_the_issue_attack_local_file_into_the_image_dir_is_refused_and_never_served(
    tmp_path: Path, fake: FakeGallery, passwd: Path
) -> None:
    name = "A" * 43 + ".png"
    sha = hashlib.sha256(SECRET).hexdigest()
    files = [{"filename": f"generated-images/{name}", "uri": passwd.as_uri(), "sha256": sha}]
    model_url = fake.add("/evil.yaml", definition("evil", files))
    settings = settings_for(tmp_path, allow_private_hosts=True)
    images = settings.resolved_image_path
    with live_server(create_app(settings)) as url:
        status = job(url, {"url": model_url})
        assert status["error"] and "generated-images" in status["error"], status
        assert not (images / name).exists()
        # Even if a file with the store's name form appears there by other means...
        (images / name).write_bytes(SECRET)
    # ...a restarted server does not adopt it: only names it signed itself are served.
    assert NAME_RE.match(name)
    with live_server(create_app(settings)) as url:
        assert httpx.get(f"{url}/generated-images/{name}").status_code == 404


def test_a_file_uri_is_refused_over_http_unless_under_an_allowed_dir(
    tmp_path: Path, fake: FakeGallery, passwd: Path
) -> None:
    sha = hashlib.sha256(SECRET).hexdigest()
    files = [{"filename": "evil_assets/passwd", "uri": passwd.as_uri(), "sha256": sha}]
    model_url = fake.add("/evil.yaml", definition("evil", files))
    strict = settings_for(tmp_path, allow_private_hosts=True)
    with live_server(create_app(strict)) as url:
        for uri in (passwd.as_uri(), str(passwd)):
            body = {"url": "github:a/b/c.yaml", "files": [{"filename": "x/p", "uri": uri, "sha256": sha}]}
            error = refused(url, body)
            assert error["code"] == "local_file_refused" and str(passwd) not in error["message"]
        assert refused(url, {"url": str(passwd)})["code"] == "local_file_refused"
        status = job(url, {"url": model_url})
        assert "local file" in status["error"] and str(passwd) not in status["error"]
        assert not (strict.models_path / "evil_assets" / "passwd").exists()
    allowed = settings_for(tmp_path, allow_private_hosts=True, local_install_dirs=(passwd.parent,))
    with live_server(create_app(allowed)) as url:
        assert job(url, {"url": model_url})["error"] is None
        assert (allowed.models_path / "evil_assets" / "passwd").read_bytes() == SECRET


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",
        "localhost:{port}",
        "[::1]:{port}",
        "169.254.169.254",
        "10.1.2.3",
        "[::ffff:127.0.0.1]",
    ],
)
def test_private_hosts_are_refused_by_default(tmp_path: Path, fake: FakeGallery, host: str) -> None:
    port = fake.url.rsplit(":", 1)[1]
    fake.add("/m.yaml", definition("m", []))
    with live_server(create_app(settings_for(tmp_path))) as url:
        target = f"http://{host.format(port=port)}/m.yaml"
        for body in ({"url": target}, {"config_url": target}):
            assert refused(url, body)["code"] == "blocked_host"
        body = {"id": "model-gallery@y", "files": [{"filename": "a/b", "uri": target, "sha256": "0" * 64}]}
        assert refused(url, body)["code"] == "blocked_host"
    assert fake.requests == []


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    """Resolve the names in ``answers`` to their next address (the last one repeats); others as usual."""
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            queue = answers[host]
            address = queue.pop(0) if len(queue) > 1 else queue[0]
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


def test_a_name_resolving_to_loopback_is_refused(
    tmp_path: Path, fake: FakeGallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"gallery.example": ["127.0.0.1"]})
    port = fake.url.rsplit(":", 1)[1]
    fake.add("/m.yaml", definition("m", []))
    with live_server(create_app(settings_for(tmp_path))) as url:
        assert refused(url, {"url": f"http://gallery.example:{port}/m.yaml"})["code"] == "blocked_host"
    assert fake.requests == []


def test_dns_rebinding_is_caught_at_connect_time(
    tmp_path: Path, fake: FakeGallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Public when the request is validated, loopback when the download connects.
    fake_dns(monkeypatch, {"rebind.example": ["93.184.216.34", "127.0.0.1"]})
    port = fake.url.rsplit(":", 1)[1]
    fake.add("/m.yaml", definition("m", []))
    with live_server(create_app(settings_for(tmp_path))) as url:
        status = job(url, {"url": f"http://rebind.example:{port}/m.yaml"})
    assert "private" in status["error"] and status["processed"]
    assert fake.requests == []


def test_fetched_content_and_refused_vs_404_never_show_in_errors(tmp_path: Path, fake: FakeGallery) -> None:
    bad_yaml = fake.add("/leak.yaml", b"name: x\n" + SECRET + b"files: [\n")
    not_a_list = fake.add("/leak2.yaml", yaml.safe_dump({"name": "x", "files": SECRET.decode()}).encode())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/m.yaml"
    missing = fake.url + "/m.yaml"
    with live_server(create_app(settings_for(tmp_path, allow_private_hosts=True))) as url:
        for leak in (bad_yaml, not_a_list):
            error = job(url, {"url": leak})["error"]
            assert error and b"SECRET" not in error.encode(), error
        refused_text = job(url, {"url": closed})["error"].replace(closed, "URL")
        missing_text = job(url, {"url": missing})["error"].replace(missing, "URL")
    assert refused_text == missing_text, (refused_text, missing_text)


def test_unreachable_gallery_answers_502(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    galleries = (Gallery("down", f"http://127.0.0.1:{port}/index.yaml"),)
    settings = settings_for(tmp_path, allow_private_hosts=True, galleries=galleries)
    with live_server(create_app(settings)) as url:
        response = httpx.get(f"{url}/models/available")
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "gallery_unreachable"


def test_files_without_sha256_install_only_when_allowed(tmp_path: Path, fake: FakeGallery) -> None:
    fake.add("/w.bin", b"weights")
    model_url = fake.add(
        "/m.yaml", definition("m", [{"filename": "m_assets/w.bin", "uri": fake.url + "/w.bin"}])
    )
    with live_server(create_app(settings_for(tmp_path, allow_private_hosts=True))) as url:
        body = {"url": model_url, "files": [{"filename": "m_assets/x", "uri": fake.url + "/w.bin"}]}
        assert refused(url, body)["code"] == "unverified_file"
        assert "no sha256" in job(url, {"url": model_url})["error"]
    loose = settings_for(tmp_path, allow_private_hosts=True, allow_unverified_installs=True)
    with live_server(create_app(loose)) as url:
        assert job(url, {"url": model_url})["error"] is None


@pytest.mark.parametrize(
    "filename",
    [
        "tinydream.yaml",
        ".tinydream.files.json",
        ".localai-sd-install.lock",
        "tinydream_assets/vocab.txt",
        "x/../../outside.txt",
        "m_assets/w.bin.partial",
    ],
)
def test_installs_never_write_another_models_files(tmp_path: Path, fake: FakeGallery, filename: str) -> None:
    payload = b"overwritten"
    fake.add("/w.bin", payload)
    sha = hashlib.sha256(payload).hexdigest()
    files = [{"filename": filename, "uri": fake.url + "/w.bin", "sha256": sha}]
    model_url = fake.add("/m.yaml", definition("m", files))
    settings = settings_for(tmp_path, allow_private_hosts=True)
    with live_server(create_app(settings)) as url:
        before = {p: p.read_bytes() for p in settings.models_path.rglob("*") if p.is_file()}
        status = job(url, {"url": model_url})
        after = {p: p.read_bytes() for p in settings.models_path.rglob("*") if p.is_file()}
    assert status["error"], status
    assert after == before
    assert not (tmp_path / "outside.txt").exists()


def test_deleting_a_hostile_model_removes_only_its_own_files(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    models = settings.models_path
    # An install recorded (by an older version, or tampered) other models' files in its manifest.
    (models / "evil.yaml").write_text(
        "name: evil\nbackend: stablediffusion\nparameters:\n  model: evil_assets\n"
    )
    (models / "evil_assets").mkdir()
    (models / "evil_assets" / "own.bin").write_bytes(b"x")
    recorded = [
        "tinydream.yaml",
        "tinydream_assets/vocab.txt",
        ".localai-sd-install.lock",
        "evil_assets/own.bin",
    ]
    (models / ".evil.files.json").write_text(json.dumps({"model": "evil", "files": recorded}))
    with live_server(create_app(settings)) as url:
        assert httpx.post(f"{url}/models/delete/evil").status_code == 200
    assert (models / "tinydream.yaml").is_file() and (models / "tinydream_assets" / "vocab.txt").is_file()
    assert not (models / "evil_assets" / "own.bin").exists() and not (models / "evil.yaml").exists()


@pytest.mark.parametrize("asset", ["/etc", "../outside", "link_out"])
def test_asset_dirs_outside_the_models_path_are_refused(
    tmp_path: Path, fake: FakeGallery, asset: str
) -> None:
    settings = settings_for(tmp_path, allow_private_hosts=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", settings.models_path / "link_out")
    model_url = fake.add("/m.yaml", definition("m", [], parameters={"model": asset}))
    with live_server(create_app(settings)) as url:
        error = refused(url, {"url": model_url, "overrides": {"parameters": {"model": asset}}})
        assert "inside the models directory" in error["message"]
        assert "inside the models directory" in job(url, {"url": model_url})["error"]
        assert not (settings.models_path / "m.yaml").exists()
        # A config written by other means is refused when loaded.
        (settings.models_path / "m.yaml").write_text(
            f"backend: stablediffusion\nparameters:\n  model: {asset}\n"
        )
        body = {"model": "m", "prompt": "x", "size": "64x64", "step": 1}
        response = httpx.post(f"{url}/v1/images/generations", json=body)
        assert (
            response.status_code >= 400
            and "inside the models directory" in response.json()["error"]["message"]
        )


def test_overlong_and_hidden_model_names_are_400(tmp_path: Path) -> None:
    with live_server(create_app(settings_for(tmp_path))) as url:
        for name in ("a" * 256, "é" * 130, ".hidden"):
            body = {"model": name, "prompt": "x", "size": "64x64", "step": 1}
            assert httpx.post(f"{url}/v1/images/generations", json=body).status_code == 400
            assert httpx.post(f"{url}/models/delete/{name}").status_code == 400
            assert refused(url, {"url": "github:a/b/c.yaml", "name": name})["param"] == "model"
