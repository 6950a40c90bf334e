"""Real processes for the cluster tests: a loopback ``redis-server`` and worker subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import LOOPBACK, WAIT_SECONDS, wait_until

from localai_sd.settings import Settings

HERE = Path(__file__).resolve().parent
#: A tiny generation.
BODY = {"prompt": "a red house", "size": "64x64", "step": 3, "seed": 42, "response_format": "b64_json"}
#: Short cluster timings for the tests (the defaults suit minutes-long CPU jobs).
WORKER_ENV = {"WORKER_TTL": "16", "JOB_GRACE": "3", "JOB_RESULT_TTL": "600"}


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throw-away ``redis-server`` on a loopback port: no persistence, killable and restartable."""

    def __init__(self, workdir: Path):
        """Pick a port; nothing runs until ``start``."""
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        """Start it and wait until it answers."""
        command = ["redis-server", "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
                   "--appendonly", "no", "--dir", str(self.workdir)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.answers, "redis-server to answer")

    def answers(self) -> bool:
        """True when a PING gets PONG."""
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL it (all data is lost: no persistence)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(WAIT_SECONDS)
            self.process = None


@contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    """A running loopback Redis for the block; skip when ``redis-server`` is not installed."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; CI installs it)")
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class Worker:
    """A worker subprocess (``tests/cluster_worker.py``, or ``local-ai worker`` with ``cli=True``)."""

    def __init__(self, process: subprocess.Popen[bytes], name: str, log: Path):
        self.process, self.name, self.log = process, name, log

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crashed machine."""
        self.process.kill()
        self.process.wait(WAIT_SECONDS)

    def stop(self) -> None:
        """SIGTERM (warm shutdown: the running job finishes), then wait; SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(
    redis_url: str,
    models: Path,
    name: str,
    logdir: Path,
    *,
    step_seconds: float = 0.0,
    cli: bool = False,
    threads: int | None = 1,
) -> Worker:
    """Start a worker process and wait until it is registered as alive for ``sd:stablediffusion``.

    ``threads`` None leaves ncnn and OpenMP their default (every core), for benchmarks."""
    if cli:
        command = [str(Path(sys.executable).parent / "local-ai"), "worker", "--redis", redis_url,
                   "--models-path", str(models), "--model", "stablediffusion", "--name", name]  # fmt: skip
        command += [] if threads is None else ["--threads", str(threads)]
    else:
        command = [sys.executable, str(HERE / "cluster_worker.py"), "--redis", redis_url, "--models-path",
                   str(models), "--name", name, "--step-seconds", str(step_seconds)]  # fmt: skip
    log = logdir / f"{name}.log"
    env = {**os.environ, **WORKER_ENV, **({} if threads is None else {"OMP_NUM_THREADS": str(threads)})}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    worker = Worker(process, name, log)
    wait_until(lambda: alive(redis_url, name) or process.poll() is not None, f"worker {name} to register")
    if process.poll() is not None:
        raise AssertionError(f"worker {name} exited: {log.read_text(errors='replace')[-2000:]}")
    return worker


def alive(redis_url: str, name: str) -> bool:
    """True when ``name`` has a live heartbeat on ``sd:stablediffusion``."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=2)
    try:
        score = client.zscore("sd:workers:sd:stablediffusion", name)
    except redis.RedisError:
        return False
    finally:
        client.close()
    return score is not None and score > time.time()


@contextmanager
def workers(redis_url: str, models: Path, logdir: Path, *names: str, step_seconds: float = 0.0,
            cli: bool = False, threads: int | None = 1) -> Iterator[list[Worker]]:  # fmt: skip
    """Worker processes for the block, stopped at its end."""
    started: list[Worker] = []
    try:
        for name in names:
            started.append(
                start_worker(
                    redis_url, models, name, logdir, step_seconds=step_seconds, cli=cli, threads=threads
                )
            )
        yield started
    finally:
        for worker in started:
            worker.stop()


def cluster_settings(models: Path, redis_url: str, tmp: Path, **changes: Any) -> Settings:
    """API settings with short cluster timings for tests."""
    values: dict[str, Any] = {
        "models_path": models,
        "image_path": tmp / "images",
        "redis_url": redis_url,
        "threads": 1,
        "job_timeout_floor_seconds": 10,
        "step_seconds_512": 0.05,
        "worker_ttl_seconds": 16,
        "job_grace_seconds": 3,
        "job_result_ttl_seconds": 600,
        "no_worker_timeout_seconds": 3.0,
    }
    return Settings(**{**values, **changes})


def jobs_by_id(base: str) -> dict[str, dict[str, Any]]:
    """``GET /v1/images/jobs`` keyed by id."""
    return {job["id"]: job for job in httpx.get(f"{base}/v1/images/jobs", timeout=10).json()["data"]}
