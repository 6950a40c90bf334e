"""Queueing over real sockets: parallel requests, a full queue, disconnects, health during a generation.

The parallel test drives the tiny real pipeline. The queue-full, disconnect and health tests need
a generation that lasts exactly as long as the test wants, so they use ``GatedPipeline``, a fake
that honours the pipeline's contract (steps, ``should_cancel``, ``Cancelled``) and waits on a gate.
"""

from __future__ import annotations

import base64
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI
from server_helpers import GatedPipeline, gated_loader, live_server, png_size, wait_until

from localai_sd.server.app import create_app
from localai_sd.settings import Settings

GENERATE = "/v1/images/generations"


def gated_app(tmp_path: Path, pipeline: GatedPipeline, **changes: object) -> FastAPI:
    """A server whose only model is served by ``pipeline``."""
    models = tmp_path / "models"
    (models / "fake_assets").mkdir(parents=True)
    (models / "stablediffusion.yaml").write_text(
        "name: stablediffusion\nbackend: stablediffusion\nparameters:\n  model: fake_assets\n",
        encoding="utf-8",
    )
    settings = Settings(models_path=models, image_path=tmp_path / "images", **changes)  # type: ignore[arg-type]
    return create_app(settings, loader=gated_loader(pipeline))


def open_request(base_url: str, body: dict[str, object]) -> socket.socket:
    """Send a generation request on a raw socket and return it unread (closing it = a disconnect)."""
    parts = urlsplit(base_url)
    payload = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname, parts.port))
    head = (
        f"POST {GENERATE} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    return sock


def jobs(base_url: str) -> list[dict[str, object]]:
    """The server's generation job list."""
    return httpx.get(f"{base_url}/v1/images/jobs").json()["data"]


def test_eight_parallel_requests_all_get_their_own_images(tiny_models: Path, tmp_path: Path) -> None:
    settings = Settings(models_path=tiny_models, image_path=tmp_path / "images", queue_size=8)
    asks = [(seed, f"{64 * (1 + seed % 2)}x{64 * (1 + seed % 3)}") for seed in range(11, 19)]

    def ask(base_url: str, seed: int, size: str) -> tuple[int, int, tuple[int, int]]:
        body = {
            "prompt": f"thing {seed}",
            "size": size,
            "step": 2,
            "seed": seed,
            "response_format": "b64_json",
        }
        response = httpx.post(f"{base_url}{GENERATE}", json=body, timeout=120)
        assert response.status_code == 200, response.text
        (item,) = response.json()["data"]
        return seed, item["seed"], png_size(base64.b64decode(item["b64_json"]))

    with live_server(create_app(settings)) as url, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda a: ask(url, *a), asks))
        finished = [j for j in jobs(url) if j["state"] == "done"]
    for (seed, size), (asked, got, pixels) in zip(asks, results, strict=True):
        width, height = map(int, size.split("x"))
        assert (asked, got, pixels) == (seed, seed, (width, height))
    assert len(finished) == 8


def test_full_queue_answers_429_and_the_queued_work_still_finishes(tmp_path: Path) -> None:
    pipeline = GatedPipeline()
    app = gated_app(tmp_path, pipeline, queue_size=1)
    body = {"prompt": "x", "size": "64x64", "step": 2, "response_format": "b64_json"}
    with live_server(app) as url, ThreadPoolExecutor(2) as pool:
        running = pool.submit(httpx.post, f"{url}{GENERATE}", json=body, timeout=60)
        wait_until(pipeline.started.is_set, "the first generation to start")
        waiting = pool.submit(httpx.post, f"{url}{GENERATE}", json=body, timeout=60)
        wait_until(lambda: any(j["state"] == "queued" for j in jobs(url)), "the second request to queue")
        full = httpx.post(f"{url}{GENERATE}", json=body)
        assert full.status_code == 429 and full.headers["retry-after"]
        assert full.json()["error"]["type"] == "rate_limit_error"
        pipeline.gate.set()
        assert running.result().status_code == 200 and waiting.result().status_code == 200


def test_disconnect_removes_a_queued_job_and_stops_a_running_one(tmp_path: Path) -> None:
    pipeline = GatedPipeline()
    app = gated_app(tmp_path, pipeline, queue_size=4)
    with live_server(app) as url:
        first = open_request(url, {"prompt": "first", "size": "64x64", "step": 3})
        wait_until(pipeline.started.is_set, "the first generation to start")
        second = open_request(url, {"prompt": "second", "size": "64x64", "step": 3})
        wait_until(
            lambda: [j["state"] for j in jobs(url)] == ["running", "queued"], "one running, one queued"
        )
        second.close()
        wait_until(
            lambda: [j["state"] for j in jobs(url)] == ["running", "cancelled"], "the queued job to go"
        )
        first.close()
        wait_until(lambda: len(pipeline.cancelled) == 1, "the running job to stop")
        states = sorted(j["state"] for j in jobs(url))
        assert states == ["cancelled", "cancelled"]
        assert [r.prompt for r in pipeline.calls] == ["first"] and pipeline.cancelled[0].prompt == "first"
        # The worker is free again: a new request completes.
        pipeline.gate.set()
        again = httpx.post(
            f"{url}{GENERATE}", json={"prompt": "third", "size": "64x64", "step": 1}, timeout=60
        )
        assert again.status_code == 200


def test_health_routes_answer_while_a_generation_runs(tmp_path: Path) -> None:
    pipeline = GatedPipeline()
    app = gated_app(tmp_path, pipeline)
    with live_server(app) as url, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            httpx.post, f"{url}{GENERATE}", json={"prompt": "x", "size": "64x64", "step": 4}, timeout=60
        )
        wait_until(pipeline.started.is_set, "the generation to start")
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        ready = httpx.get(f"{url}/readyz", timeout=5).json()
        assert ready["running"] == 1 and ready["ready"] is True
        assert not pending.done()
        pipeline.gate.set()
        assert pending.result().status_code == 200
