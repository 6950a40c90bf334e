"""OpenAI image streaming (``stream: true``, ``partial_images``) and the job SSE routes, over real sockets.

``/v1/images/generations`` is wired to ``stream_images`` by the lead; until then these tests mount
the same wiring under ``/stream-test/v1`` so the official client can talk to it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from server_helpers import live_server, png_size, slow_loader, wait_until

from localai_sd.jobs import events as ev
from localai_sd.server.app import create_app
from localai_sd.server.jobs import GenerationJob
from localai_sd.server.schemas import ImageGenerationBody, parse_body
from localai_sd.server.streaming import StreamFields, stream_images
from localai_sd.settings import Settings

TEST_PREFIX = "/stream-test/v1"


class StreamingBody(ImageGenerationBody, StreamFields):
    """The generations body with the two streaming fields (the lead adds them to the real model)."""


def with_stream_route(app: FastAPI) -> FastAPI:
    """Mount the streaming wiring the lead will put in ``routes_images.generate_images``."""

    async def generate(request: Request) -> object:
        body = await parse_body(request, StreamingBody)
        state = request.app.state.server
        gen_request, config = state.prepare(body)
        job = GenerationJob(config, gen_request)
        assert body.stream, "this test route only streams"
        return await stream_images(request, state.queue, job, partial_images=body.partial_images or 0)

    app.add_api_route(TEST_PREFIX + "/images/generations", generate, methods=["POST"])
    return app


@pytest.fixture
def server(tiny_models: Path, tmp_path: Path) -> Iterator[str]:
    """A live server on the tiny nets, slowed to 0.2 s per step, keep-alives every 0.1 s."""
    settings = Settings(models_path=tiny_models, image_path=tmp_path / "images", sse_keepalive_seconds=0.1)
    with live_server(with_stream_route(create_app(settings, loader=slow_loader(0.2)))) as url:
        yield url


def test_official_client_streams_two_partials_then_the_image(server: str) -> None:
    client = openai.OpenAI(base_url=server + TEST_PREFIX, api_key="unused", max_retries=0)
    stream = client.images.generate(
        prompt="a lighthouse",
        model="stablediffusion",
        size="128x64",
        stream=True,
        partial_images=2,  # type: ignore[arg-type]
        extra_body={"steps": 6, "seed": 7},
    )
    events = list(stream)
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]  # type: ignore[union-attr]
    for event in events:
        assert event.size == "128x64" and event.output_format == "png"
        assert png_size(base64.b64decode(event.b64_json)) == (128, 64)


def test_keepalives_come_between_events_and_the_frames_are_named(server: str) -> None:
    body = {"prompt": "a cat", "size": "64x64", "steps": 3, "stream": True, "partial_images": 1}
    with httpx.stream("POST", f"{server}{TEST_PREFIX}/images/generations", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    assert ": keep-alive" in text
    names = [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]
    assert names == ["image_generation.partial_image", "image_generation.completed"]
    datas = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert datas[0]["partial_image_index"] == 0 and datas[1]["type"] == "image_generation.completed"


def test_a_client_that_leaves_mid_stream_cancels_its_job(server: str) -> None:
    body = {"prompt": "a slow cat", "size": "64x64", "steps": 50, "stream": True, "partial_images": 3}
    with httpx.stream("POST", f"{server}{TEST_PREFIX}/images/generations", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # the first partial image (step 13 of 50), then hang up
    jobs = lambda: httpx.get(f"{server}/v1/images/jobs").json()["data"]  # noqa: E731
    wait_until(lambda: jobs()[0]["state"] == "cancelled", "the stream's job to be cancelled")
    assert jobs()[0]["step"] < 50


def test_job_events_route_replays_after_a_cursor_and_cancel_route_stops_the_job(server: str) -> None:
    created = httpx.post(f"{server}/v1/images/jobs", json={"prompt": "a fox", "size": "64x64", "steps": 40})
    assert created.status_code == 200, created.text
    job = created.json()["id"]
    seen: list[dict[str, object]] = []
    with httpx.stream("GET", f"{server}/v1/images/jobs/{job}/events", timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["type"] == "preview":
                    cancelled = httpx.post(f"{server}/v1/images/jobs/{job}/cancel")
                    assert cancelled.status_code == 200
    kinds = [e["type"] for e in seen]
    assert kinds[0] == "queued" and "progress" in kinds and kinds[-1] == "cancelled"
    assert httpx.get(f"{server}/v1/images/jobs/{job}").json()["state"] == "cancelled"
    # Resuming after the cursor replays only what came later (Last-Event-ID works the same).
    with httpx.stream(
        "GET", f"{server}/v1/images/jobs/{job}/events", headers={"last-event-id": "2"}
    ) as again:
        ids = [int(line[4:]) for line in again.iter_lines() if line.startswith("id: ")]
    assert ids and min(ids) == 3
    result = httpx.get(f"{server}/v1/images/jobs/{job}/result")
    assert result.status_code == 499 and result.json()["error"]["code"] == "cancelled"


def test_unknown_jobs_are_404_and_an_unfinished_result_is_409(server: str) -> None:
    for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/cancel"), ("GET", "/result")):
        answer = httpx.request(method, f"{server}/v1/images/jobs/nope{path}")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "job_not_found"
    job = httpx.post(
        f"{server}/v1/images/jobs", json={"prompt": "a fox", "size": "64x64", "steps": 30}
    ).json()
    early = httpx.get(f"{server}/v1/images/jobs/{job['id']}/result")
    assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_finished"
    httpx.post(f"{server}/v1/images/jobs/{job['id']}/cancel")


def test_events_round_trip_as_plain_dicts() -> None:
    done = ev.Done((1, 2), 64, 64)
    assert ev.from_dict(json.loads(json.dumps(ev.to_dict(done)))) == done
    assert ev.to_dict(ev.Queued(3)) == {"type": "queued", "position": 3}


@pytest.mark.slow
def test_real_architecture_streams_256_three_steps_with_two_partials(
    synthetic_models: Path, tmp_path: Path
) -> None:
    settings = Settings(models_path=synthetic_models, image_path=tmp_path / "images", threads=2)
    with live_server(with_stream_route(create_app(settings))) as url:
        client = openai.OpenAI(base_url=url + TEST_PREFIX, api_key="unused", max_retries=0, timeout=900)
        stream = client.images.generate(
            prompt="a watercolor fox",
            size="256x256",  # type: ignore[arg-type]
            stream=True,
            partial_images=2,
            extra_body={"steps": 3, "seed": 1234, "mode": 1},
        )
        events = list(stream)
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    for event in events:
        assert png_size(base64.b64decode(event.b64_json)) == (256, 256)
