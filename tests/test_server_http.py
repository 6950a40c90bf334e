"""The HTTP layer against a tiny real model: LocalAI curl bodies, validation, errors, URLs, limits, auth."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from server_helpers import live_server, png_size, wait_until

from localai_sd.server.app import create_app
from localai_sd.settings import Settings


def settings_for(models: Path, tmp_path: Path, **changes: object) -> Settings:
    """Settings on the shared tiny models, writing images under ``tmp_path``."""
    return Settings(models_path=models, image_path=tmp_path / "images", **changes)  # type: ignore[arg-type]


@pytest.fixture
def client(tiny_models: Path, tmp_path: Path) -> Iterator[TestClient]:
    """A TestClient on a server with the tiny models and no keys."""
    with TestClient(create_app(settings_for(tiny_models, tmp_path))) as test_client:
        yield test_client


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    """Assert an OpenAI-shaped error with ``status`` and no retry; return the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert response.headers["x-should-retry"] == "false"
    return error


def test_localai_docs_curl_body_returns_a_png_of_the_asked_size(client: TestClient) -> None:
    # The body of LocalAI's image-generation docs (mode 2 = the faster convolution), b64 to check pixels.
    body = {"prompt": "A cute baby sea otter|blurry", "size": "128x64", "step": 2, "mode": 2, "seed": 7}
    response = client.post("/v1/images/generations", json={**body, "response_format": "b64_json"})
    assert response.status_code == 200, response.text
    data = response.json()
    assert isinstance(data["created"], int) and data["id"]
    (item,) = data["data"]
    assert "embedding" not in item and "index" not in item and "url" not in item
    assert item["seed"] == 7
    assert png_size(base64.b64decode(item["b64_json"])) == (128, 64)


def test_nulls_unknown_fields_object_format_steps_and_negative_prompt(client: TestClient) -> None:
    body = {
        "prompt": "a red house",
        "negative_prompt": "fog",
        "n": 2,
        "size": "64x64",
        "steps": 2,
        "seed": 100,
        "response_format": {"type": "b64_json"},
        "model": None,
        "mode": None,
        "sampler": None,
        "schedule": None,
        "cfg_scale": None,
        "user": None,
        "quality": "hd",
        "style": "vivid",
        "background": "auto",
        "something_new": {"x": 1},
    }
    response = client.post("/images/generations", json=body)
    assert response.status_code == 200, response.text
    items = response.json()["data"]
    assert [i["seed"] for i in items] == [100, 101]
    assert all(png_size(base64.b64decode(i["b64_json"])) == (64, 64) for i in items)
    assert client.get("/v1/images/jobs").json()["data"][0]["state"] == "done"


def test_url_images_are_absolute_served_once_written_and_nothing_else(
    tiny_models: Path, tmp_path: Path
) -> None:
    headers = {
        "x-forwarded-proto": "https",
        "x-forwarded-host": "ai.example.com",
        "x-forwarded-prefix": "/sd",
    }
    body = {"prompt": "a boat", "size": "64x64", "step": 2, "seed": 3}
    with TestClient(create_app(settings_for(tiny_models, tmp_path))) as client:
        # Proxy headers from a peer not in --forwarded-allow-ips are ignored (no link spoofing).
        item = client.post("/v1/images/generations", json=body, headers=headers).json()["data"][0]
        assert item["url"].startswith("http://testserver/generated-images/")
    trusted = settings_for(tiny_models, tmp_path, forwarded_allow_ips=("testclient",))
    with TestClient(create_app(trusted)) as client:
        item = client.post("/v1/images/generations", json=body, headers=headers).json()["data"][0]
        prefix = "https://ai.example.com/sd/generated-images/"
        assert item["url"].startswith(prefix) and item["seed"] == 3
        name = item["url"].removeprefix(prefix)
        image = client.get(f"/generated-images/{name}")
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert png_size(image.content) == (64, 64)
        assert (tmp_path / "images" / name).is_file()
        (tmp_path / "images" / "mine.png").write_bytes(image.content)
        for bad in ("mine.png", "..%2F..%2Fstablediffusion.yaml", "%2e%2e", name + "x"):
            error_of(client.get(f"/generated-images/{bad}"), 404)
    with TestClient(
        create_app(settings_for(tiny_models, tmp_path, base_url="https://pub.example/x/"))
    ) as client:
        item = client.post("/v1/images/generations", json=body).json()["data"][0]
        assert item["url"].startswith("https://pub.example/x/generated-images/")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "size": "100x100"}, "size"),
        ({"prompt": "x", "size": "big"}, "size"),
        ({"prompt": "x", "size": "2048x2048"}, "size"),
        ({"prompt": "x", "n": 11}, "n"),
        ({"prompt": "x", "n": "abc"}, "n"),
        ({"n": 1}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "response_format": "png"}, "response_format"),
        ({"prompt": "x", "response_format": {"type": "gif"}}, "response_format"),
        ({"prompt": "x", "step": 0}, "step"),
        ({"prompt": "x", "seed": -2}, "seed"),
        ({"prompt": "x", "mode": -3}, "mode"),
        ({"prompt": "x", "sampler": "nope"}, "sampler"),
        ({"prompt": "x", "model": "../etc"}, "model"),
        ({"prompt": "x" * 5000}, "prompt"),
        ({"prompt": "x", "n": 10, "step": 200}, "n"),
    ],
)
def test_invalid_fields_are_400_naming_the_param(client: TestClient, body: dict, param: str) -> None:
    error = error_of(client.post("/v1/images/generations", json=body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_pixel_cap_unknown_model_bad_json_and_unknown_route(tiny_models: Path, tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tiny_models, tmp_path, max_pixels=64 * 64))) as client:
        assert error_of(client.post("/v1/images/generations", json={"prompt": "x"}), 400)["param"] == "size"
        error = error_of(
            client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64", "model": "sd2"}), 404
        )
        assert error["code"] == "model_not_found" and "sd2" in error["message"]
        assert (
            error_of(client.post("/v1/images/generations", content=b"{oops"), 400)["code"] == "invalid_json"
        )
        assert "list" in error_of(client.post("/v1/images/generations", content=b"[]"), 400)["message"]
        error_of(client.get("/v1/no-such-route"), 404)


def test_body_over_the_upload_limit_is_413_by_length_and_by_stream(tiny_models: Path, tmp_path: Path) -> None:
    app = create_app(settings_for(tiny_models, tmp_path, upload_limit_mb=1))
    big = b'{"prompt": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    with live_server(app) as url:
        assert (
            error_of(httpx.post(f"{url}/v1/images/generations", content=big), 413)["code"]
            == "request_too_large"
        )

        def chunks() -> Iterator[bytes]:
            """The same body streamed without a Content-Length (chunked)."""
            for start in range(0, len(big), 65536):
                yield big[start : start + 65536]

        streamed = httpx.post(f"{url}/v1/images/generations", content=chunks())
        assert "content-length" not in streamed.request.headers
        assert error_of(streamed, 413)["code"] == "request_too_large"


def test_api_keys_no_key_wrong_key_right_key(tiny_models: Path, tmp_path: Path) -> None:
    app = create_app(settings_for(tiny_models, tmp_path, api_keys=("key-one", "key-two")))
    body = {"prompt": "x", "size": "64x64", "step": 1, "response_format": "b64_json"}
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        wait_until(lambda: client.get("/readyz").status_code == 200, "the default model to warm up")
        missing = error_of(client.post("/v1/images/generations", json=body), 401)
        assert missing["type"] == "authentication_error" and missing["code"] == "missing_api_key"
        wrong = client.get("/v1/models", headers={"Authorization": "Bearer key-three"})
        assert error_of(wrong, 401)["code"] == "invalid_api_key"
        error_of(client.get("/v1/models", headers={"Authorization": "Basic key-one"}), 401)
        right = {"Authorization": "Bearer key-two"}
        models = client.get("/v1/models", headers=right).json()
        assert {m["id"] for m in models["data"]} >= {"stablediffusion"}
        assert client.post("/v1/images/generations", json=body, headers=right).status_code == 200


def test_model_lists_and_health(client: TestClient) -> None:
    for path in ("/v1/models", "/models"):
        body = client.get(path).json()
        assert body["object"] == "list" and {m["id"] for m in body["data"]} == {
            "stablediffusion",
            "tinydream",
        }
    assert client.get("/healthz").status_code == 200
    wait_until(lambda: client.get("/readyz").status_code == 200, "the default model to warm up")
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["running"] == 0


def test_url_images_expire_after_the_ttl_and_are_deleted(tiny_models: Path, tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tiny_models, tmp_path, image_ttl_seconds=1))) as client:
        body = {"prompt": "a moth", "size": "64x64", "step": 1}
        url = client.post("/v1/images/generations", json=body).json()["data"][0]["url"]
        name = url.rsplit("/", 1)[1]
        wait_until(
            lambda: not (tmp_path / "images" / name).exists(), "the sweeper to delete the expired image"
        )
        error_of(client.get(f"/generated-images/{name}"), 404)


def test_cors_preflight_when_enabled(tiny_models: Path, tmp_path: Path) -> None:
    headers = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    settings = settings_for(tiny_models, tmp_path, cors_allow_origins=("*",), api_keys=("k",))
    with TestClient(create_app(settings)) as client:
        preflight = client.options("/v1/images/generations", headers=headers)
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"
    with TestClient(create_app(settings_for(tiny_models, tmp_path))) as client:
        assert (
            "access-control-allow-origin"
            not in client.options("/v1/images/generations", headers=headers).headers
        )


def test_the_default_model_is_warm_before_readyz_says_ready(tiny_models: Path, tmp_path: Path) -> None:
    """serve loads the default model's nets at start (readyz 503 meanwhile); --lazy-load leaves it to a request."""
    with TestClient(create_app(settings_for(tiny_models, tmp_path))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, "the default model to warm up")
        assert client.get("/readyz").json()["loaded_models"] == ["stablediffusion"]
    with TestClient(create_app(settings_for(tiny_models, tmp_path, lazy_load=True))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["loaded_models"] == []
