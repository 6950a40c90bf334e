"""Install jobs are bounded: a fixed thread pool, a queue answering 429 when full, finished jobs evicted."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from server_helpers import wait_until

from localai_sd.errors import QueueFull
from localai_sd.server.app import create_app
from localai_sd.server.installs import InstallJobs, InstallStatus
from localai_sd.settings import Settings
from localai_sd.testing.fake_gallery import FakeGallery


def test_a_full_install_queue_raises_and_threads_stay_bounded() -> None:
    gate = threading.Event()
    jobs = InstallJobs(workers=2, max_waiting=3)
    before = threading.active_count()

    def work(status: InstallStatus) -> str:
        gate.wait(30)
        return "completed"

    started = [jobs.start(work) for _ in range(5)]
    with pytest.raises(QueueFull, match="install queue is full"):
        jobs.start(work)
    assert threading.active_count() - before <= 2
    gate.set()
    wait_until(lambda: all(s.processed for s in started), "installs")
    assert all(s.message == "completed" for s in started)
    assert jobs.start(work) is not None  # slots are free again
    jobs.stop()


def test_finished_jobs_are_evicted_by_count_and_age() -> None:
    now = [0.0]
    jobs = InstallJobs(workers=1, max_waiting=100, keep=3, ttl_seconds=60, clock=lambda: now[0])
    statuses = [jobs.start(lambda status: "ok") for _ in range(10)]
    wait_until(lambda: all(s.processed for s in statuses), "installs")
    assert list(jobs.all()) == [s.uuid for s in statuses[-3:]]
    now[0] = 61.0
    assert jobs.all() == {} and jobs.get(statuses[-1].uuid) is None
    jobs.stop()


def test_a_thousand_applies_keep_threads_and_jobs_bounded(tmp_path: Path) -> None:
    with FakeGallery() as fake:
        model_url = fake.add("/slow.yaml", b"name: slow\n")
        fake.slow("/slow.yaml", 2.0)
        settings = Settings(
            models_path=tmp_path / "models",
            allow_private_hosts=True,
            download_retries=0,
            install_workers=2,
            install_queue_size=8,
            install_jobs_kept=20,
        )
        with TestClient(create_app(settings)) as client:
            before = threading.active_count()
            peak, codes = before, {200: 0, 429: 0}
            for _ in range(1000):
                response = client.post("/models/apply", json={"url": model_url})
                codes[response.status_code] += 1
                if response.status_code == 429:
                    assert (
                        response.headers["retry-after"] and response.json()["error"]["code"] == "queue_full"
                    )
                peak = max(peak, threading.active_count())
            installers = [t for t in threading.enumerate() if t.name.startswith("localai-sd-install")]
            assert len(installers) == 2
            # 2 install workers, 2 fake-gallery handlers, a few anyio pool threads: nothing per request.
            assert peak - before <= 8, (before, peak)
            print(f"threads: {before} before, peak {peak} over 1000 applies; {codes}")
            assert codes[200] >= 10 and codes[200] + codes[429] == 1000, codes
            assert len(client.get("/models/jobs").json()) <= 10 + 20
