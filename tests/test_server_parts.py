"""Unit tests of the server's parts: image store, queue, install jobs, warm-model cache, URLs, errors, CLI flags."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from server_helpers import GatedPipeline, wait_until
from starlette.requests import Request

from localai_sd.errors import Cancelled, InvalidRequest, ModelNotFound, QueueFull
from localai_sd.models import ModelConfig
from localai_sd.pipeline.request import GenerationRequest
from localai_sd.server.errors import from_library_error, validation_error
from localai_sd.server.images import NAME_RE, ImageStore
from localai_sd.server.jobs import CANCELLED, DONE, GenerationJob, GenerationQueue, InstallJobs, human_size
from localai_sd.server.middleware import key_matches
from localai_sd.server.models_cache import ModelCache
from localai_sd.server.urls import public_base_url


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        """Start at t=1000."""
        self.now = 1000.0

    def __call__(self) -> float:
        """The current fake time."""
        return self.now


def config(name: str, tmp_path: Path) -> ModelConfig:
    """A model config pointing at a (fake) asset dir."""
    return ModelConfig(
        name=name, backend="stablediffusion", asset_dir=tmp_path, config_path=tmp_path / f"{name}.yaml"
    )


def job(tmp_path: Path, **kwargs: object) -> GenerationJob:
    """A small generation job."""
    request = GenerationRequest.create("a cat", size="64x64", steps=2, seed=1, **kwargs)  # type: ignore[arg-type]
    return GenerationJob(config("m", tmp_path), request)


def test_image_store_names_are_unguessable_and_only_own_files_are_served(tmp_path: Path) -> None:
    clock = Clock()
    store = ImageStore(tmp_path / "images", ttl_seconds=60, clock=clock)
    store.prepare()
    names = {store.save(b"png-bytes") for _ in range(20)}
    assert len(names) == 20 and all(NAME_RE.match(n) for n in names)
    name = next(iter(names))
    assert store.path_for(name).read_bytes() == b"png-bytes"
    (tmp_path / "images" / "planted.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("s")
    for bad in ("planted.png", "../secret.txt", "..", "a" * 43 + ".png", name.replace(".png", ".txt")):
        assert store.path_for(bad) is None, bad


def test_image_store_expires_and_cleans_up_after_the_ttl(tmp_path: Path) -> None:
    clock = Clock()
    store = ImageStore(tmp_path, ttl_seconds=60, clock=clock)
    store.prepare()
    old = store.save(b"old")
    clock.now += 30
    young = store.save(b"young")
    clock.now += 31
    assert store.path_for(old) is None
    assert store.cleanup() == 1
    assert not (tmp_path / old).exists() and (tmp_path / young).exists()
    assert store.path_for(young) is not None


def test_image_store_adopts_unexpired_files_of_a_previous_run(tmp_path: Path) -> None:
    first = ImageStore(tmp_path, ttl_seconds=3600)
    first.prepare()
    name = first.save(b"kept")
    second = ImageStore(tmp_path, ttl_seconds=3600)
    second.prepare()
    assert second.path_for(name) is not None


def test_queue_runs_fifo_and_reports_progress(tmp_path: Path) -> None:
    order: list[str] = []

    def runner(j: GenerationJob) -> list:
        order.append(j.id)
        return [j.id]

    queue = GenerationQueue(runner, workers=1, max_waiting=8)
    jobs = [job(tmp_path) for _ in range(5)]
    for j in jobs:
        queue.submit(j)
    queue.start()
    try:
        results = [j.future.result(timeout=30) for j in jobs]
    finally:
        queue.stop()
    assert order == [j.id for j in jobs] and results == [[j.id] for j in jobs]
    assert all(j.state == DONE for j in jobs)


def test_full_queue_raises_queue_full(tmp_path: Path) -> None:
    pipeline = GatedPipeline()
    queue = GenerationQueue(
        lambda j: pipeline.generate(j.request, should_cancel=j.cancelled), workers=1, max_waiting=1
    )
    queue.start()
    try:
        running, waiting = job(tmp_path), job(tmp_path)
        queue.submit(running)
        wait_until(pipeline.started.is_set, "the first job to start")
        queue.submit(waiting)
        with pytest.raises(QueueFull, match="queue is full"):
            queue.submit(job(tmp_path))
        pipeline.gate.set()
        assert len(running.future.result(timeout=30)) == 1
        assert len(waiting.future.result(timeout=30)) == 1
    finally:
        queue.stop()


def test_cancel_removes_a_waiting_job_and_stops_a_running_one(tmp_path: Path) -> None:
    pipeline = GatedPipeline()
    queue = GenerationQueue(
        lambda j: pipeline.generate(j.request, on_step=j.on_step, should_cancel=j.cancelled),
        workers=1,
        max_waiting=4,
    )
    queue.start()
    try:
        running, waiting = job(tmp_path), job(tmp_path)
        queue.submit(running)
        queue.submit(waiting)
        wait_until(pipeline.started.is_set, "the first job to start")
        queue.cancel(waiting)
        assert waiting.state == CANCELLED
        with pytest.raises(Cancelled):
            waiting.future.result(timeout=1)
        queue.cancel(running)
        with pytest.raises(Cancelled):
            running.future.result(timeout=30)
        assert running.state == CANCELLED
        assert pipeline.calls == [running.request]  # the waiting job never ran
    finally:
        queue.stop()


def test_install_jobs_record_error_text_and_run_in_parallel() -> None:
    jobs = InstallJobs()
    release = threading.Event()

    def slow(status: object) -> str:
        release.wait(30)
        return "completed"

    def failing(status: object) -> str:
        raise ModelNotFound("gallery entry 'x' not found")

    blocked = jobs.start(slow)
    failed = jobs.start(failing)
    wait_until(lambda: failed.processed, "the failing job (it must not wait behind the slow one)")
    assert blocked.processed is False
    body = failed.as_json()
    assert body["error"] == "gallery entry 'x' not found" and body["message"].startswith("error: ")
    release.set()
    wait_until(lambda: blocked.processed, "the slow job")
    assert blocked.as_json()["error"] is None and blocked.progress == 100
    assert set(jobs.all()) == {blocked.uuid, failed.uuid}


def test_model_cache_keeps_models_warm_and_bounds_them(tmp_path: Path) -> None:
    loads: list[str] = []
    made: dict[str, GatedPipeline] = {}

    def loader(cfg: ModelConfig) -> GatedPipeline:
        loads.append(cfg.name)
        made[cfg.name] = GatedPipeline()
        return made[cfg.name]

    cache = ModelCache(loader, max_loaded=1)
    a, b = config("a", tmp_path), config("b", tmp_path)
    for _ in range(3):
        with cache.lease(a):
            pass
    assert loads == ["a"]
    with cache.lease(a) as pipe_a:
        with cache.lease(b):
            assert not pipe_a.closed  # in use: closed only after its lease ends
        assert cache.loaded() == ["b"]
    assert made["a"].closed and loads == ["a", "b"]
    cache.evict("b")
    assert made["b"].closed and cache.loaded() == []


def make_request(headers: dict[str, str], root_path: str = "") -> Request:
    """A bare Starlette request with the given headers."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": root_path,
        "scheme": "http",
        "server": ("10.0.0.5", 8080),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


def test_public_base_url_prefers_base_url_then_forwarded_headers() -> None:
    assert public_base_url(make_request({"host": "a:1"}), "https://x.org/sd/") == "https://x.org/sd"
    assert public_base_url(make_request({"host": "internal:8080"}), None) == "http://internal:8080"
    forwarded = {
        "host": "internal:8080",
        "x-forwarded-proto": "https, http",
        "x-forwarded-host": "ai.example.com",
        "x-forwarded-prefix": "/sd/",
    }
    assert public_base_url(make_request(forwarded), None) == "https://ai.example.com/sd"
    hostile = {"host": "ok.example", "x-forwarded-host": "evil/path", "x-forwarded-proto": "javascript"}
    assert public_base_url(make_request(hostile), None) == "http://ok.example"
    assert public_base_url(make_request({}), None) == "http://10.0.0.5:8080"


def test_error_mapping_and_validation_messages() -> None:
    assert from_library_error(InvalidRequest("bad", param="size")).status == 400
    assert from_library_error(ModelNotFound("no model")).status == 404
    full = from_library_error(QueueFull("full"))
    assert (full.status, full.retryable) == (429, True)
    missing = validation_error([{"loc": ("body", "prompt"), "type": "missing", "msg": "Field required"}])
    assert (missing.status, missing.param) == (400, "prompt")
    typed = validation_error([{"loc": ("body", "n"), "type": "int_parsing", "msg": "bad int", "input": "x"}])
    assert typed.param == "n" and "'x'" in typed.message


def test_human_size_and_key_compare() -> None:
    assert (human_size(None), human_size(512), human_size(1536), human_size(int(1.7 * 2**30))) == (
        "",
        "512 B",
        "1.5 KiB",
        "1.7 GiB",
    )
    assert key_matches("k2", ("k1", "k2")) and not key_matches("k3", ("k1", "k2"))


def test_serve_flags_follow_localai_names_and_env(tmp_path: Path) -> None:
    from localai_sd.cli.serve import build_settings, parse_address

    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address(":9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:80") == ("::1", 80)
    with pytest.raises(InvalidRequest, match="HOST:PORT"):
        parse_address("localhost")
    env = {"MODELS_PATH": str(tmp_path), "API_KEY": "a,b", "UPLOAD_LIMIT": "3", "ADDRESS": ":1234"}
    settings = build_settings(env, base_url="https://x.org", image_ttl=60, queue_size=2, max_loaded_models=2)
    assert settings.models_path == tmp_path and settings.api_keys == ("a", "b")
    assert (settings.upload_limit_mb, settings.address, settings.base_url) == (3, ":1234", "https://x.org")
    assert (settings.image_ttl_seconds, settings.queue_size, settings.max_loaded_models) == (60, 2, 2)
    assert build_settings(env, api_keys="z", upload_limit=7).api_keys == ("z",)
    with pytest.raises(InvalidRequest, match="--threads"):
        build_settings({}, threads=0)
