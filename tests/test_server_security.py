"""Attacks from web pages and malformed bodies, performed against the app: each must be refused with a 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from server_helpers import live_server, wait_until

from localai_sd.server.app import create_app
from localai_sd.server.csrf import host_allowed, same_origin, split_host
from localai_sd.settings import Settings

GENERATE = "/v1/images/generations"
BODY = '{"prompt": "a cat", "size": "64x64", "step": 1, "response_format": "b64_json"}'
EVIL = "https://attacker.example"


def settings_for(models: Path, tmp_path: Path, **changes: object) -> Settings:
    """Tiny models, no galleries (nothing reachable), images under ``tmp_path``."""
    return Settings(models_path=models, image_path=tmp_path / "images", galleries=(), **changes)  # type: ignore[arg-type]


@pytest.fixture
def client(tiny_models: Path, tmp_path: Path) -> Iterator[TestClient]:
    """The default server: no keys, no CORS origins, no extra hosts."""
    with TestClient(create_app(settings_for(tiny_models, tmp_path))) as test_client:
        yield test_client


def error_code(response: httpx.Response, status: int) -> str:
    """Assert an OpenAI-shaped error with ``status``; return its code."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return str(error["code"])


def test_cross_site_form_post_cannot_install_or_delete_models(client: TestClient, tiny_models: Path) -> None:
    # What a hostile page's auto-submitting <form method=post> sends: a form type and its Origin.
    form = {"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"}
    apply = client.post("/models/apply", content='{"id": "x@y"}', headers=form)
    assert error_code(apply, 403) == "cross_origin_forbidden"
    delete = client.post("/models/delete/tinydream", headers=form)
    assert error_code(delete, 403) == "cross_origin_forbidden"
    assert (tiny_models / "tinydream.yaml").is_file()
    # text/plain is the other preflight-free type; Sec-Fetch-Site alone marks a cross-site fetch.
    plain = {"Origin": "null", "Content-Type": "text/plain"}
    assert error_code(client.post(GENERATE, content=BODY, headers=plain), 403) == "cross_origin_forbidden"
    fetch_meta = {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}
    assert (
        error_code(client.post(GENERATE, content=BODY, headers=fetch_meta), 403) == "cross_origin_forbidden"
    )


def test_same_origin_page_and_curl_keep_working(client: TestClient) -> None:
    # The studio page at / fetches with Origin = the server's own origin and JSON.
    studio = {
        "Origin": "http://testserver",
        "Content-Type": "application/json",
        "Sec-Fetch-Site": "same-origin",
    }
    assert client.post(GENERATE, content=BODY, headers=studio).status_code == 200
    # LocalAI's documented `curl -d` sends a form type and no Origin; a bare body has no type.
    curl = {"Content-Type": "application/x-www-form-urlencoded"}
    assert client.post(GENERATE, content=BODY, headers=curl).status_code == 200
    assert client.post(GENERATE, content=BODY).status_code == 200
    # A same-origin page must still send JSON, not a form; multipart is for routes that declare it.
    form = {"Origin": "http://testserver", "Content-Type": "application/x-www-form-urlencoded"}
    assert error_code(client.post(GENERATE, content=BODY, headers=form), 415) == "unsupported_media_type"
    multipart = {"Content-Type": "multipart/form-data; boundary=x"}
    assert error_code(client.post(GENERATE, content=BODY, headers=multipart), 415) == "unsupported_media_type"
    # Reads stay open to cross-site GETs (the browser hides the answer without CORS headers).
    assert client.get("/v1/models", headers={"Origin": EVIL}).status_code == 200


def test_listed_origin_may_post_and_star_only_reads(tiny_models: Path, tmp_path: Path) -> None:
    ui = "https://ui.example"
    settings = settings_for(tiny_models, tmp_path, cors_allow_origins=(ui, "*"))
    with TestClient(create_app(settings)) as client:
        headers = {"Origin": ui, "Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}
        response = client.post(GENERATE, content=BODY, headers=headers)
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "*"
        other = {"Origin": "https://other.example", "Content-Type": "application/json"}
        assert error_code(client.post(GENERATE, content=BODY, headers=other), 403) == "cross_origin_forbidden"
        assert client.get("/v1/models", headers=other).headers["access-control-allow-origin"] == "*"


def test_dns_rebinding_host_is_refused_on_a_live_server(tiny_models: Path, tmp_path: Path) -> None:
    # A rebinding page resolves attacker.example to 127.0.0.1: the request reaches us with its Host.
    with live_server(create_app(settings_for(tiny_models, tmp_path))) as url:
        port = url.rsplit(":", 1)[1]
        for host in (f"attacker.example:{port}", "attacker.example", "127.0.0.1.nip.io"):
            rebound = httpx.get(f"{url}/v1/models", headers={"Host": host})
            assert error_code(rebound, 403) == "host_not_allowed", host
            post = httpx.post(f"{url}/models/delete/tinydream", headers={"Host": host})
            assert error_code(post, 403) == "host_not_allowed"
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "studio.localhost"):
            assert httpx.get(f"{url}/v1/models", headers={"Host": host}).status_code == 200, host
    allowed = settings_for(tiny_models, tmp_path, allowed_hosts=("sd.lan",))
    with live_server(create_app(allowed)) as url:
        assert httpx.get(f"{url}/v1/models", headers={"Host": "SD.lan:8080"}).status_code == 200
        assert httpx.get(f"{url}/v1/models", headers={"Host": "attacker.example"}).status_code == 403


def test_host_and_origin_rules() -> None:
    assert split_host("[::1]:8080") == ("::1", "8080") and split_host("Example.COM.") == ("example.com", None)
    assert host_allowed("10.0.0.5:8080", ()) and host_allowed("anything", ("*",))
    assert host_allowed("box:80", (), server=("box", 80)) and not host_allowed(
        "box", (), server=("10.0.0.5", 80)
    )
    assert same_origin("http://localhost:8080", ["localhost:8080"])
    assert same_origin("https://ai.example.com", ["ai.example.com:443"])
    assert not same_origin("http://localhost:3000", ["localhost:8080"]) and not same_origin("null", ["null"])


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"prompt": "x", "n": ' + "9" * 5000 + "}", None),
        ('{"prompt": "x", "size": "' + "9" * 5000 + 'x64"}', "size"),
        ('{"prompt": "x", "user": ' + "[" * 100_000 + "]" * 100_000 + "}", None),
        ('{"prompt": "x", "user": ' + "[" * 40 + "]" * 40 + "}", "user"),
        ('{"prompt": "a \\ud800 cat", "size": "64x64"}', "prompt"),
        ('{"prompt": "x", "negative_prompt": "\\udfff"}', "negative_prompt"),
    ],
)
def test_malformed_bodies_are_400_not_500(client: TestClient, body: str, param: str | None) -> None:
    response = client.post(GENERATE, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_head_health_x_api_key_and_untrusted_forwarded_headers(tiny_models: Path, tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tiny_models, tmp_path, api_keys=("k1",)))) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, "the default model to warm up")
        for path in ("/healthz", "/readyz"):
            head = client.head(path)
            assert head.status_code == 200 and head.content == b""
        assert client.get("/v1/models", headers={"x-api-key": "k1"}).status_code == 200
        assert error_code(client.get("/v1/models", headers={"x-api-key": "k2"}), 401) == "invalid_api_key"
        spoofed = {"x-api-key": "k1", "x-forwarded-host": "evil.example", "x-forwarded-proto": "https"}
        body = {"prompt": "x", "size": "64x64", "step": 1}
        url = client.post(GENERATE, json=body, headers=spoofed).json()["data"][0]["url"]
        assert url.startswith("http://testserver/")
