"""SIGTERM with a full generation queue: queued jobs fail with 503 at once, the running one stops, the process exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from conftest import install_tiny_model
from server_helpers import LOOPBACK, wait_until
from test_server_cli import free_port, up

#: Jobs sent: one runs, the rest wait in the queue.
JOBS = 6
#: Each job alone runs for many seconds on the tiny model (hundreds of steps at 512x512).
SLOW_BODY = {"prompt": "a slow cat", "size": "512x512", "step": 900, "response_format": "b64_json"}
#: "Within a few seconds".
EXIT_LIMIT_SECONDS = 10.0


def test_sigterm_with_a_full_queue_exits_within_seconds(tmp_path: Path) -> None:
    models = tmp_path / "models"
    install_tiny_model(models)
    url = f"http://{LOOPBACK}:{free_port()}"
    env = {**os.environ, "ADDRESS": url.removeprefix("http://"), "MODELS_PATH": str(models), "THREADS": "1"}
    command = [sys.executable, "-c", "from localai_sd.cli.app import main; main()", "serve"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    answers: list[httpx.Response | Exception] = []

    def generate() -> None:
        try:
            answers.append(httpx.post(f"{url}/v1/images/generations", json=SLOW_BODY, timeout=600))
        except httpx.HTTPError as exc:
            answers.append(exc)

    try:
        wait_until(lambda: process.poll() is not None or up(url), "local-ai serve to start")
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        clients = [threading.Thread(target=generate) for _ in range(JOBS)]
        for client in clients:
            client.start()
        wait_until(
            lambda: httpx.get(f"{url}/readyz").json()["queued"] == JOBS - 1 or len(answers) > 0,
            "a full queue",
        )
        assert not answers, answers  # every job was accepted and is still running or queued
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(120)
        elapsed = time.monotonic() - started
        for client in clients:
            client.join(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print(f"exit {elapsed:.2f} s after SIGTERM with 1 running and {JOBS - 1} queued jobs")
    assert elapsed < EXIT_LIMIT_SECONDS, elapsed
    statuses = [a.status_code for a in answers if isinstance(a, httpx.Response)]
    assert statuses.count(503) >= JOBS - 1, answers
    codes = {a.json()["error"]["code"] for a in answers if isinstance(a, httpx.Response)}
    assert codes == {"shutting_down"}, codes
