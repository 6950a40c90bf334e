"""The real architecture through the HTTP API: real .param files with synthetic weights, 256x256, 2 steps."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest
from server_helpers import live_server, png_size

from localai_sd.server.app import create_app
from localai_sd.settings import Settings


@pytest.mark.slow
def test_real_architecture_256_two_steps_over_http(synthetic_models: Path, tmp_path: Path) -> None:
    settings = Settings(models_path=synthetic_models, image_path=tmp_path / "images", threads=2)
    body = {"prompt": "a watercolor fox", "size": "256x256", "step": 2, "seed": 1234, "mode": 1}
    with live_server(create_app(settings)) as url:
        first = httpx.post(
            f"{url}/v1/images/generations", json={**body, "response_format": "b64_json"}, timeout=900
        )
        assert first.status_code == 200, first.text
        (item,) = first.json()["data"]
        assert item["seed"] == 1234
        assert png_size(base64.b64decode(item["b64_json"])) == (256, 256)
        # Second request: URL mode, the model stays loaded (one load for both requests).
        second = httpx.post(f"{url}/v1/images/generations", json=body, timeout=900)
        assert second.status_code == 200, second.text
        assert png_size(httpx.get(second.json()["data"][0]["url"]).content) == (256, 256)
        assert httpx.get(f"{url}/readyz").json()["loaded_models"] == ["stablediffusion"]
