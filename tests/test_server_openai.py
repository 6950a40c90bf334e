"""The official ``openai`` client against the server over a real socket, with the tiny real model."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from server_helpers import live_server, png_size

from localai_sd.models import ModelConfig
from localai_sd.server.app import create_app
from localai_sd.server.middleware import ASGIApp, Receive, Scope, Send
from localai_sd.settings import Settings


class CountingApp:
    """ASGI wrapper counting HTTP requests per path (to prove the client did not retry)."""

    def __init__(self, app: ASGIApp):
        """Wrap ``app``."""
        self.app = app
        self.counts: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count, then pass on."""
        if scope["type"] == "http":
            self.counts[scope["path"]] = self.counts.get(scope["path"], 0) + 1
        await self.app(scope, receive, send)


@pytest.fixture
def served(tiny_models: Path, tmp_path: Path) -> Iterator[tuple[openai.OpenAI, CountingApp]]:
    """An ``openai.OpenAI`` client (default retries) pointed at a live server, and the request counter."""
    counting = CountingApp(create_app(Settings(models_path=tiny_models, image_path=tmp_path / "images")))
    with live_server(counting) as url:  # type: ignore[arg-type]
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused"), counting


def test_generate_b64_json_with_localai_extras(served: tuple[openai.OpenAI, CountingApp]) -> None:
    client, _ = served
    result = client.images.generate(
        prompt="a lighthouse at dusk",
        size="128x64",
        n=2,
        response_format="b64_json",
        extra_body={"step": 2, "seed": 42, "mode": 1, "negative_prompt": "blurry"},
    )
    assert isinstance(result.created, int) and len(result.data) == 2
    assert [image.model_extra["seed"] for image in result.data] == [42, 43]
    for image in result.data:
        assert image.url is None
        assert png_size(base64.b64decode(image.b64_json)) == (128, 64)


def test_generate_url_then_download_it(served: tuple[openai.OpenAI, CountingApp]) -> None:
    client, _ = served
    result = client.images.generate(prompt="a fox", size="64x64", extra_body={"step": 1, "seed": 9})
    (image,) = result.data
    assert image.url.startswith("http://127.0.0.1:") and "/generated-images/" in image.url
    assert image.model_extra["seed"] == 9
    assert png_size(httpx.get(image.url).content) == (64, 64)


def test_same_seed_same_image_different_seed_different_image(
    served: tuple[openai.OpenAI, CountingApp],
) -> None:
    client, _ = served

    def png(seed: int) -> bytes:
        kwargs = {"prompt": "a tree", "size": "64x64", "response_format": "b64_json"}
        result = client.images.generate(**kwargs, extra_body={"step": 2, "seed": seed})
        return base64.b64decode(result.data[0].b64_json)

    assert png(5) == png(5)
    assert png(5) != png(6)


def test_bad_size_raises_bad_request_and_is_not_retried(served: tuple[openai.OpenAI, CountingApp]) -> None:
    client, counting = served
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", size="100x100")
    assert caught.value.status_code == 400 and caught.value.param == "size"
    assert counting.counts["/v1/images/generations"] == 1


def test_unknown_model_is_not_found(served: tuple[openai.OpenAI, CountingApp]) -> None:
    client, counting = served
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(prompt="x", model="dall-e-3", size="64x64")
    assert caught.value.code == "model_not_found"
    assert counting.counts["/v1/images/generations"] == 1


def test_a_server_fault_is_500_and_not_retried(tiny_models: Path, tmp_path: Path) -> None:
    def broken_loader(config: ModelConfig) -> object:
        raise RuntimeError("simulated fault while loading the nets")

    settings = Settings(models_path=tiny_models, image_path=tmp_path / "images")
    counting = CountingApp(create_app(settings, loader=broken_loader))  # type: ignore[arg-type]
    with live_server(counting) as url:  # type: ignore[arg-type]
        client = openai.OpenAI(
            base_url=url, api_key="unused"
        )  # no /v1: the SDK then calls /images/generations
        with pytest.raises(openai.InternalServerError) as caught:
            client.images.generate(prompt="x", size="64x64")
    assert "simulated fault" in str(caught.value)
    assert counting.counts == {"/images/generations": 1}


def test_wrong_key_raises_authentication_error(tiny_models: Path, tmp_path: Path) -> None:
    settings = Settings(models_path=tiny_models, image_path=tmp_path / "images", api_keys=("s3cret",))
    with live_server(create_app(settings)) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong").images.generate(prompt="x", size="64x64")
        good = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret")
        result = good.images.generate(prompt="x", size="64x64", extra_body={"step": 1})
        assert len(result.data) == 1
