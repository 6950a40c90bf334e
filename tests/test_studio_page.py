"""The studio's files: served at / and /studio/ without an API key (the API behind them still needs one)."""

from __future__ import annotations

from pathlib import Path

import httpx
from server_helpers import live_server

from localai_sd.server.app import create_app
from localai_sd.settings import Settings


def test_page_and_assets_are_public_with_a_strict_csp_while_the_api_needs_the_key(tmp_path: Path) -> None:
    settings = Settings(models_path=tmp_path / "models", api_keys=("sekrit",), galleries=())
    with live_server(create_app(settings)) as url:
        page = httpx.get(url + "/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/studio/app.js"' in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
            asset = httpx.get(f"{url}/studio/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert (
            httpx.get(url + "/studio/__init__.py").status_code == 401
        )  # not a shipped web file: the API's rules
        assert httpx.get(url + "/v1/studio/options").status_code == 401
        options = httpx.get(url + "/v1/studio/options", headers={"authorization": "Bearer sekrit"}).json()
        assert "euler_a" in [s["name"] for s in options["samplers"]] and "512x512" in options["sizes"]


def test_the_studio_can_be_turned_off(tmp_path: Path) -> None:
    settings = Settings(models_path=tmp_path / "models", studio=False, galleries=())
    with live_server(create_app(settings)) as url:
        assert httpx.get(url + "/").status_code == 404


def test_studio_env_switch() -> None:
    assert Settings.from_env({"STUDIO": "false"}).studio is False
    assert Settings.from_env({"SSE_KEEPALIVE": "5"}).sse_keepalive_seconds == 5.0
