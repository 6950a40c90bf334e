"""Cluster failures with real processes: a worker SIGKILLed mid-job, Redis killed and restarted."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from cluster_helpers import BODY, cluster_settings, jobs_by_id, redis_server, workers
from server_helpers import live_server, wait_until

from localai_sd.server.app import create_app
from localai_sd.settings import Settings

#: Longest wait for the cluster to recover after Redis returns, seconds.
RECOVERY_SECONDS = 60.0


def test_killed_workers_job_finishes_on_another_worker_with_the_same_bytes(tiny_models: Path, tmp_path: Path):
    body = {**BODY, "step": 8, "seed": 1234}
    local = create_app(Settings(models_path=tiny_models, image_path=tmp_path / "local", threads=1))
    with live_server(local) as base:
        expected = httpx.post(f"{base}/v1/images/generations", json=body, timeout=60).json()["data"][0]
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as redis:
        app = create_app(cluster_settings(tiny_models, redis.url, tmp_path))
        with (
            live_server(app) as base,
            workers(redis.url, tiny_models, tmp_path, "doomed", step_seconds=0.5) as (doomed,),
            ThreadPoolExecutor(1) as pool,
        ):
            pending = pool.submit(httpx.post, f"{base}/v1/images/generations", json=body, timeout=180)
            wait_until(
                lambda: any(j["step"] >= 2 for j in jobs_by_id(base).values()), "the job's second step"
            )
            doomed.kill()
            started = time.monotonic()
            with workers(redis.url, tiny_models, tmp_path, "rescuer", step_seconds=0.1):
                response = pending.result()
            recovered = time.monotonic() - started
            assert response.status_code == 200, response.text
            item = response.json()["data"][0]
            assert item["seed"] == 1234
            assert base64.b64decode(item["b64_json"]) == base64.b64decode(expected["b64_json"])
            assert [job["worker"] for job in jobs_by_id(base).values()] == ["rescuer"]
            assert recovered < 60  # job timeout (10 s) + grace (3 s) + maintenance, not RQ's 180 + 60


def post(base: str) -> httpx.Response:
    """One tiny generation."""
    return httpx.post(f"{base}/v1/images/generations", json=BODY, timeout=30)


def test_redis_down_answers_503_then_recovers_by_itself(tiny_models: Path, tmp_path: Path):
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as redis:
        app = create_app(cluster_settings(tiny_models, redis.url, tmp_path))
        with live_server(app) as base, workers(redis.url, tiny_models, tmp_path, "w1"):
            assert post(base).status_code == 200
            redis.kill()
            for _ in range(2):
                down = post(base)
                assert down.status_code == 503, down.text
                error = down.json()["error"]
                assert (
                    error["code"] == "backend_unavailable"
                    and "Redis at redis://127.0.0.1:" in error["message"]
                )
                assert down.headers["retry-after"] == "5" and down.headers["x-should-retry"] == "true"
            assert httpx.get(f"{base}/readyz", timeout=10).status_code == 503
            redis.start()  # the same port, empty: every job and registration is gone
            deadline = time.monotonic() + RECOVERY_SECONDS
            while (answer := post(base)).status_code != 200:
                assert answer.status_code == 503, answer.text  # no worker yet, or Redis still down
                assert time.monotonic() < deadline, "the cluster did not recover"
                time.sleep(0.5)
            assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
