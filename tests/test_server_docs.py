"""``/docs`` and ``/redoc`` work offline: every script, style and icon they reference is served by the app."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from localai_sd.server.app import create_app
from localai_sd.settings import Settings

#: ``src="..."``/``href="..."`` attributes and Swagger's ``url: '...'`` in the HTML page.
REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")


@pytest.fixture
def client(tmp_path: Path):
    with TestClient(create_app(Settings(models_path=tmp_path / "models"))) as client:
        yield client


@pytest.mark.parametrize(
    ("page", "needs"),
    [("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))],
)
def test_docs_pages_reference_only_local_assets_that_the_app_serves(
    client: TestClient, page: str, needs: tuple[str, ...]
) -> None:
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    references = [a or b for a, b in REFERENCE.findall(response.text)]
    assert all(any(r.endswith(name) for r in references) for name in needs), references
    for reference in references:
        assert reference.startswith("/") and not reference.startswith("//"), f"{page} loads {reference}"
        asset = client.get(reference)
        assert asset.status_code == 200, reference
        assert len(asset.content) > (1000 if reference.endswith((".js", ".css")) else 10), reference
    assert "http://" not in response.text and "https://" not in response.text  # no CDN, no web fonts


def test_docs_pages_stay_out_of_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)
