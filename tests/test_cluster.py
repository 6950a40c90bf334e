"""The cluster with real processes: a loopback redis-server, worker subprocesses on the tiny nets, the API.

Each test starts its own workers; ``tests/cluster_worker.py`` slows the tiny nets per step so that jobs
overlap, can be cancelled mid-way, and fill a queue.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_helpers import BODY, RedisServer, cluster_settings, jobs_by_id, redis_server, workers
from server_helpers import live_server, png_size, wait_until

from localai_sd.server.app import create_app


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the module (flushed by each test)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def fresh(redis: RedisServer) -> RedisServer:
    """The module's Redis, emptied."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    client.flushall()
    client.close()
    return redis


def status(base: str, job_id: str) -> dict[str, Any]:
    """``GET /v1/images/jobs/{id}``."""
    return httpx.get(f"{base}/v1/images/jobs/{job_id}", timeout=10).json()


def start_job(base: str, **changes: Any) -> str:
    """``POST /v1/images/jobs``; the new job's id."""
    response = httpx.post(f"{base}/v1/images/jobs", json={**BODY, **changes}, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def test_eight_clients_are_all_served_by_both_workers(tiny_models: Path, fresh: RedisServer, tmp_path: Path):
    app = create_app(cluster_settings(tiny_models, fresh.url, tmp_path))
    with workers(fresh.url, tiny_models, tmp_path, "w1", "w2", step_seconds=0.3), live_server(app) as base:

        def generate(seed: int) -> httpx.Response:
            return httpx.post(f"{base}/v1/images/generations", json={**BODY, "seed": seed}, timeout=120)

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(generate, range(100, 108)))
        assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses]
        seeds = [r.json()["data"][0]["seed"] for r in responses]
        assert seeds == list(range(100, 108))
        for response in responses:
            assert png_size(base64.b64decode(response.json()["data"][0]["b64_json"])) == (64, 64)
        done = [job for job in jobs_by_id(base).values() if job["state"] == "done"]
        assert len(done) == 8
        assert {job["worker"] for job in done} == {"w1", "w2"}, done


def test_local_ai_worker_command_serves_a_url_image(tiny_models: Path, fresh: RedisServer, tmp_path: Path):
    app = create_app(cluster_settings(tiny_models, fresh.url, tmp_path))
    with workers(fresh.url, tiny_models, tmp_path, "cli-worker", cli=True), live_server(app) as base:
        response = httpx.post(
            f"{base}/v1/images/generations", json={**BODY, "response_format": "url"}, timeout=60
        )
        assert response.status_code == 200, response.text
        url = response.json()["data"][0]["url"]
        image = httpx.get(url, timeout=10)  # stored by the API from the worker's PNG bytes
        assert image.status_code == 200 and png_size(image.content) == (64, 64)
        assert [job["worker"] for job in jobs_by_id(base).values()] == ["cli-worker"]


def test_cancel_stops_the_worker_at_its_next_step_and_it_takes_the_next_job(
    tiny_models: Path, fresh: RedisServer, tmp_path: Path
):
    app = create_app(cluster_settings(tiny_models, fresh.url, tmp_path))
    with workers(fresh.url, tiny_models, tmp_path, "w1", step_seconds=0.5), live_server(app) as base:
        job_id = start_job(base, step=30)
        wait_until(lambda: status(base, job_id)["step"] >= 1, "the job's first step")
        cancelled = httpx.post(f"{base}/v1/images/jobs/{job_id}/cancel", timeout=10)
        assert cancelled.status_code == 200
        wait_until(lambda: status(base, job_id)["state"] == "cancelled", "the job to stop")
        assert status(base, job_id)["step"] < 30
        with httpx.stream("GET", f"{base}/v1/images/jobs/{job_id}/events", timeout=30) as stream:
            kinds = [
                line.removeprefix("event: ") for line in stream.iter_lines() if line.startswith("event: ")
            ]
        assert kinds[0] == "queued" and "progress" in kinds and kinds[-1] == "cancelled"
        result = httpx.get(f"{base}/v1/images/jobs/{job_id}/result", timeout=10)
        assert result.status_code == 499 and result.json()["error"]["code"] == "cancelled"
        started = time.monotonic()
        response = httpx.post(f"{base}/v1/images/generations", json=BODY, timeout=60)
        assert response.status_code == 200, response.text
        assert time.monotonic() - started < 20  # not behind the 30-step job
        assert [job["worker"] for job in jobs_by_id(base).values()] == ["w1", "w1"]


def test_queue_over_its_bound_answers_429(tiny_models: Path, fresh: RedisServer, tmp_path: Path):
    app = create_app(cluster_settings(tiny_models, fresh.url, tmp_path, queue_size=1))
    with workers(fresh.url, tiny_models, tmp_path, "w1", step_seconds=0.5), live_server(app) as base:
        running = start_job(base, step=30)
        wait_until(lambda: status(base, running)["state"] == "running", "the first job to start")
        waiting = start_job(base, step=30)
        assert status(base, waiting)["queue_position"] == 1
        full = httpx.post(f"{base}/v1/images/generations", json=BODY, timeout=10)
        assert full.status_code == 429, full.text
        assert full.json()["error"]["code"] == "queue_full"
        assert full.headers["retry-after"] == "10"
        for job_id in (waiting, running):
            httpx.post(f"{base}/v1/images/jobs/{job_id}/cancel", timeout=10)
        wait_until(lambda: status(base, running)["state"] == "cancelled", "the running job to stop")


def test_model_without_worker_is_refused_at_once_and_a_stranded_job_fails(
    tiny_models: Path, fresh: RedisServer, tmp_path: Path
):
    app = create_app(cluster_settings(tiny_models, fresh.url, tmp_path))
    with live_server(app) as base:
        with workers(fresh.url, tiny_models, tmp_path, "w1", step_seconds=0.3) as (worker,):
            started = time.monotonic()
            refused = httpx.post(
                f"{base}/v1/images/generations", json={**BODY, "model": "tinydream"}, timeout=10
            )
            assert time.monotonic() - started < 5
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert (
                error["code"] == "no_worker"
                and error["param"] == "model"
                and "'tinydream'" in error["message"]
            )
            assert refused.headers["retry-after"] == "5"
            running = start_job(base, step=6)
            wait_until(lambda: status(base, running)["state"] == "running", "the first job to start")
            stranded = start_job(base, step=2)
            worker.stop()  # warm shutdown: the running job finishes, the queued one has no worker left
        assert status(base, running)["state"] == "done"
        wait_until(lambda: status(base, stranded)["state"] == "failed", "the stranded job to fail")
        assert "no worker" in status(base, stranded)["error"]
        result = httpx.get(f"{base}/v1/images/jobs/{stranded}/result", timeout=10)
        assert result.status_code == 503 and result.json()["error"]["code"] == "no_worker"


def test_an_edit_through_the_cluster_keeps_unmasked_pixels_and_matches_local(
    tiny_models: Path, fresh: RedisServer, tmp_path: Path
) -> None:
    """An inpainting edit (multipart, mask with alpha) runs on a worker: unmasked pixels come back bit-identical
    to the input, and the image equals the one the local queue gives for the same seed."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.full((64, 64, 4), 255, np.uint8)
    mask[16:32, 16:32, 3] = 0  # transparent = repaint (OpenAI's rule)

    def png(array: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(array).save(out, format="PNG")
        return out.getvalue()

    files = {"image": ("photo.png", png(photo), "image/png"), "mask": ("mask.png", png(mask), "image/png")}
    fields = {"prompt": "a red square", "step": "3", "seed": "7", "response_format": "b64_json", "mode": "0"}

    def edit(base: str) -> bytes:
        response = httpx.post(f"{base}/v1/images/edits", files=files, data=fields, timeout=120)
        assert response.status_code == 200, response.text
        return base64.b64decode(response.json()["data"][0]["b64_json"])

    app = create_app(cluster_settings(tiny_models, fresh.url, tmp_path))
    with workers(fresh.url, tiny_models, tmp_path, "w1"), live_server(app) as base:
        clustered = edit(base)
    local = create_app(cluster_settings(tiny_models, None, tmp_path / "local"))  # type: ignore[arg-type]
    with live_server(local) as base:
        assert edit(base) == clustered
    pixels = np.asarray(Image.open(io.BytesIO(clustered)).convert("RGB"))
    keep = np.ones((64, 64), bool)
    keep[16 - 12 : 32 + 12, 16 - 12 : 32 + 12] = False  # the masked square and the blur around it
    np.testing.assert_array_equal(pixels[keep], photo[keep])
