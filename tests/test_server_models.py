"""Model management over HTTP against a loopback fake gallery, then generation with the new model."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_helpers import live_server, png_size, wait_until

from localai_sd.server.app import create_app
from localai_sd.settings import Gallery, Settings
from localai_sd.testing.fake_gallery import FakeGallery
from localai_sd.testing.tiny import build_tiny_assets


def definition(gallery_url: str, assets: Path, asset_dir: str) -> str:
    """A LocalAI model-definition YAML listing every tiny asset with its sha256 and URL."""
    lines = [
        "name: sd-tiny",
        "description: a tiny test model",
        "config_file: |",
        "  backend: stablediffusion",
        "  parameters:",
        f"    model: {asset_dir}",
        "files:",
    ]
    for path in sorted(p for p in assets.iterdir() if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines += [
            f"  - filename: {asset_dir}/{path.name}",
            f"    sha256: {digest.upper()}",
            f"    uri: {gallery_url}/assets/{path.name}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def gallery(tmp_path: Path) -> Iterator[FakeGallery]:
    """A fake gallery serving the tiny model's files, its definition and an index."""
    root = tmp_path / "gallery"
    build_tiny_assets(root / "assets")
    with FakeGallery(root) as fake:
        fake.add("/sd-tiny.yaml", definition(fake.url, root / "assets", "sd-tiny_assets").encode())
        fake.add("/index.yaml", f"- name: sd-tiny\n  url: {fake.url}/sd-tiny.yaml\n  tags: [tiny]\n".encode())
        yield fake


@pytest.fixture
def server(gallery: FakeGallery, tmp_path: Path) -> Iterator[str]:
    """A live server with an empty models dir and the fake gallery configured."""
    settings = Settings(
        models_path=tmp_path / "models",
        galleries=(Gallery("test", f"{gallery.url}/index.yaml"),),
        download_retries=1,
        allow_private_hosts=True,  # the fake gallery is on loopback
    )
    with live_server(create_app(settings)) as url:
        yield url


def finished_job(status_url: str) -> dict[str, object]:
    """Poll a job status URL until ``processed``; return the final status."""
    wait_until(lambda: httpx.get(status_url).json()["processed"], f"job {status_url}")
    return httpx.get(status_url).json()


def test_apply_poll_then_generate_with_the_new_model(server: str) -> None:
    assert httpx.get(f"{server}/v1/models").json()["data"] == []
    by_id = httpx.post(f"{server}/models/apply", json={"id": "test@sd-tiny", "url": None, "overrides": None})
    assert by_id.status_code == 200, by_id.text
    applied = by_id.json()
    assert applied["status"] == f"{server}/models/jobs/{applied['uuid']}"
    status = finished_job(applied["status"])
    assert status["error"] is None and status["message"] == "completed" and status["progress"] == 100
    assert status["file_size_bytes"] > 0 and status["file_size"].endswith("B")
    assert {m["id"] for m in httpx.get(f"{server}/models").json()["data"]} == {"sd-tiny"}
    body = {"model": "sd-tiny", "prompt": "a cat", "size": "64x64", "step": 2, "response_format": "b64_json"}
    generated = httpx.post(f"{server}/v1/images/generations", json=body, timeout=120)
    assert generated.status_code == 200, generated.text
    assert png_size(base64.b64decode(generated.json()["data"][0]["b64_json"])) == (64, 64)
    available = httpx.get(f"{server}/models/available").json()
    assert [(e["name"], e["installed"]) for e in available] == [("sd-tiny", True)]
    assert applied["uuid"] in httpx.get(f"{server}/models/jobs").json()


def test_install_under_a_new_name_then_delete(server: str, gallery: FakeGallery) -> None:
    applied = httpx.post(
        f"{server}/models/apply", json={"url": f"{gallery.url}/sd-tiny.yaml", "name": "painter"}
    )
    assert finished_job(applied.json()["status"])["error"] is None
    body = {"model": "painter", "prompt": "a dog", "size": "64x64", "step": 1, "response_format": "b64_json"}
    assert httpx.post(f"{server}/v1/images/generations", json=body, timeout=120).status_code == 200
    deleted = httpx.post(f"{server}/models/delete/painter")
    assert deleted.status_code == 200, deleted.text
    assert httpx.get(f"{server}/v1/models").json()["data"] == []
    gone = httpx.post(f"{server}/v1/images/generations", json=body)
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "model"
    assert httpx.post(f"{server}/models/delete/painter").status_code == 404


def test_a_bad_url_gives_an_error_text_in_the_job(server: str, gallery: FakeGallery) -> None:
    applied = httpx.post(f"{server}/models/apply", json={"url": f"{gallery.url}/no-such-model.yaml"})
    assert applied.status_code == 200
    status = finished_job(applied.json()["status"])
    # Over the API a 404 reads like any other failure (no port-scan oracle).
    assert isinstance(status["error"], str) and "could not be fetched" in status["error"]
    assert "404" not in status["error"]
    assert status["message"] == f"error: {status['error']}" and status["processed"] is True


def test_apply_validates_before_queueing(server: str) -> None:
    for body, param in (
        ({}, "url"),
        ({"url": "ftp://example.com/model.yaml"}, None),
        ({"url": "github:x/y/z.yaml", "name": "../escape"}, "model"),
        ({"url": "github:x/y/z.yaml", "overrides": [1]}, "overrides"),
    ):
        response = httpx.post(f"{server}/models/apply", json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert error["message"] and (param is None or error["param"] == param), error
    assert httpx.get(f"{server}/models/jobs").json() == {}
    missing = httpx.get(f"{server}/models/jobs/not-a-job")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "uuid"


def test_preload_models_installs_before_serving(gallery: FakeGallery, tmp_path: Path) -> None:
    preload = f'[{{"url": "{gallery.url}/sd-tiny.yaml", "name": "preloaded"}}]'
    settings = Settings(models_path=tmp_path / "models", preload_models=preload, download_retries=1)
    with live_server(create_app(settings)) as url:
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["preloaded"]
        body = {
            "model": "preloaded",
            "prompt": "x",
            "size": "64x64",
            "step": 1,
            "response_format": "b64_json",
        }
        assert httpx.post(f"{url}/v1/images/generations", json=body, timeout=120).status_code == 200


def test_a_failing_preload_is_reported_and_the_server_still_starts(
    gallery: FakeGallery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    preload = f'[{{"url": "{gallery.url}/missing.yaml"}}]'
    settings = Settings(models_path=tmp_path / "models", preload_models=preload, download_retries=1)
    with live_server(create_app(settings)) as url:
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, "readiness")
    assert any(
        "preloading models failed" in r.message and "missing.yaml" in r.message for r in caplog.records
    )


WHISPER = b"""name: whisper-base
config_file: |
  backend: whisper
  parameters:
    model: ggml-whisper-base.bin
files:
  - filename: ggml-whisper-base.bin
    sha256: "%s"
    uri: %s/whisper.bin
"""


@pytest.fixture
def whisper(gallery: FakeGallery) -> FakeGallery:
    """The gallery with a whisper entry (and its weights file) next to sd-tiny."""
    weights = b"whisper weights"
    digest = hashlib.sha256(weights).hexdigest().encode()
    gallery.add("/whisper.bin", weights)
    gallery.add("/whisper-base.yaml", WHISPER % (digest, gallery.url.encode()))
    index = httpx.get(f"{gallery.url}/index.yaml").content
    gallery.add(
        "/index.yaml", index + f"- name: whisper-1\n  url: {gallery.url}/whisper-base.yaml\n".encode()
    )
    return gallery


def test_available_lists_image_models_unless_all(server: str, whisper: FakeGallery) -> None:
    default = httpx.get(f"{server}/models/available")
    assert default.status_code == 200, default.text
    assert [(e["name"], e["backend"]) for e in default.json()] == [("sd-tiny", "stablediffusion")]
    everything = httpx.get(f"{server}/models/available", params={"all": "true"}).json()
    assert [(e["name"], e["backend"]) for e in everything] == [
        ("sd-tiny", "stablediffusion"),
        ("whisper-1", "whisper"),
    ]


def test_a_non_image_install_is_refused_before_any_download(server: str, whisper: FakeGallery) -> None:
    # Not listed yet: the job refuses it before fetching a file, naming the backend.
    applied = httpx.post(f"{server}/models/apply", json={"id": "test@whisper-1"})
    assert applied.status_code == 200, applied.text
    error = finished_job(applied.json()["status"])["error"]
    assert isinstance(error, str) and "backend 'whisper'" in error and "only image models" in error
    # Once listed (or when the request names the backend), apply answers 400 at once.
    httpx.get(f"{server}/models/available")
    for body in (
        {"id": "test@whisper-1"},
        {"id": "whisper-1"},
        {"id": "sd-tiny", "overrides": {"backend": "bert"}},
    ):
        refused = httpx.post(f"{server}/models/apply", json=body)
        assert refused.status_code == 400, (body, refused.text)
        assert refused.json()["error"]["code"] == "unsupported_backend" and "backend '" in refused.text
    assert whisper.count("/whisper.bin") == 0
    assert httpx.get(f"{server}/v1/models").json()["data"] == []


def test_a_failed_install_can_be_deleted_over_http(server: str, gallery: FakeGallery, tmp_path: Path) -> None:
    models = tmp_path / "models"
    gallery.fail("/assets/vocab.txt", 404)
    applied = httpx.post(f"{server}/models/apply", json={"id": "test@sd-tiny"})
    assert finished_job(applied.json()["status"])["error"]
    kept = list((models / "sd-tiny_assets").iterdir())
    assert kept and not (models / "sd-tiny.yaml").exists()
    deleted = httpx.post(f"{server}/models/delete/sd-tiny")
    assert deleted.status_code == 200, deleted.text
    assert not (models / "sd-tiny_assets").exists()
    assert httpx.post(f"{server}/models/delete/sd-tiny").status_code == 404
