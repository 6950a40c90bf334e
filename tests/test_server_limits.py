"""Bounded work at the server's intake: prompt characters, total work, text encoding, memory admission."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from localai_sd.pipeline import memory
from localai_sd.pipeline.memory import estimate
from localai_sd.pipeline.request import GenerationRequest
from localai_sd.server.app import create_app
from localai_sd.server.schemas import ImageGenerationBody
from localai_sd.settings import Settings

GENERATE = "/v1/images/generations"
GIB = 1 << 30


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    """Assert an OpenAI-shaped error with ``status``; return the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.fixture
def client(tiny_models: Path, tmp_path: Path) -> Iterator[TestClient]:
    """A server on the tiny models with a roomy memory budget (the machine's RAM does not matter)."""
    settings = Settings(models_path=tiny_models, image_path=tmp_path / "images", max_memory_bytes=64 * GIB)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def jobs_seen(client: TestClient) -> int:
    """How many generation jobs the server has queued or run (none, if refused at the intake)."""
    return len(client.get("/v1/images/jobs").json()["data"])


def test_break_negative_prompt_is_refused_before_queueing(client: TestClient) -> None:
    # The attack: a short prompt with a negative_prompt of "BREAK " * 3000 held the worker ~330 s.
    body = {"prompt": "a cat", "negative_prompt": "BREAK " * 3000, "size": "64x64", "step": 1}
    error = error_of(client.post(GENERATE, json=body), 400)
    assert error["param"] == "negative_prompt" and "together" in str(error["message"])
    body = {"prompt": "a cat|" + "BREAK " * 3000, "size": "64x64", "step": 1}
    error = error_of(client.post(GENERATE, json=body), 400)
    assert error["param"] == "prompt"
    assert jobs_seen(client) == 0


@pytest.mark.parametrize(("field", "text"), [("prompt", "a \ud800 cat"), ("negative_prompt", "blur\udfff")])
def test_lone_surrogate_is_a_400_before_any_generation(client: TestClient, field: str, text: str) -> None:
    # Before: the request was generated in full, then the PNG writer failed (a 500).
    body = {"prompt": "a cat", "size": "64x64", "step": 1, "response_format": "b64_json", field: text}
    raw = json.dumps(body).encode()  # ASCII JSON with a "\ud800" escape, as any client may send
    error = error_of(client.post(GENERATE, content=raw, headers={"Content-Type": "application/json"}), 400)
    assert error["param"] == field and "lone surrogate" in str(error["message"])
    assert jobs_seen(client) == 0


def test_total_work_counts_pixels(client: TestClient) -> None:
    # n x steps was capped (1000) but not the pixels: 10 x 100 at 1024x1024 is 4x the default ceiling.
    body = {"prompt": "x", "size": "1024x1024", "n": 10, "step": 100}
    error = error_of(client.post(GENERATE, json=body), 400)
    assert error["param"] == "n" and "max_pixel_steps" in str(error["message"])


def test_memory_budget_refuses_what_does_not_fit_and_tiles_what_needs_it(
    tiny_models: Path, tmp_path: Path
) -> None:
    # A budget just under the whole-image 512x512 mode-0 estimate, so 512x512 only fits with a tiled decode.
    large = GenerationRequest.create("x", size="512x512", mode=0)
    setup = memory.setup_for(large, low_memory=False, threads=None, backend="stablediffusion")
    budget = estimate(512, 512, 0, setup).peak - 1
    assert estimate(512, 512, 0, setup, decode_tile=48).peak <= budget
    settings = Settings(models_path=tiny_models, image_path=tmp_path / "images", max_memory_bytes=budget)
    with TestClient(create_app(settings)) as client:
        body = {"prompt": "x", "size": "1024x1024", "mode": 1, "step": 1}
        error = error_of(client.post(GENERATE, json=body), 400)
        limit = f"the memory limit is {budget / memory.GB:.1f} GB"
        assert error["param"] == "size" and limit in str(error["message"])
        assert "needs about" in str(error["message"]) and jobs_seen(client) == 0

        state = client.app.state.server  # type: ignore[attr-defined]
        assert state.memory_budget == budget
        request, _ = state.prepare(ImageGenerationBody(prompt="x", size="256x256", mode=0))
        assert request.decode_tile is None
        request, _ = state.prepare(ImageGenerationBody(prompt="x", size="512x512", mode=0))
        assert request.decode_tile is not None


def test_default_budget_comes_from_the_machine(tiny_models: Path, tmp_path: Path) -> None:
    app = create_app(Settings(models_path=tiny_models, image_path=tmp_path / "images"))
    budget = app.state.server.memory_budget
    total = next(
        int(line.split()[1]) * 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    assert budget is not None and 0 < budget <= total
