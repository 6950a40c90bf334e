"""``local-ai serve`` as a real process, driven by the runnable examples (curl script and openai client)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO_ROOT, install_tiny_model
from server_helpers import LOOPBACK, png_size, wait_until
from typer.testing import CliRunner

from localai_sd.cli.app import build_app

EXAMPLES = REPO_ROOT / "examples"


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def up(url: str) -> bool:
    """True once the server answers /readyz with 200."""
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[str]:
    """``local-ai serve`` configured through LocalAI's env var names, with a tiny ``stablediffusion``."""
    models = tmp_path / "models"
    install_tiny_model(models)
    url = f"http://{LOOPBACK}:{free_port()}"
    env = {
        **os.environ,
        "ADDRESS": url.removeprefix("http://"),
        "MODELS_PATH": str(models),
        "IMAGE_PATH": str(tmp_path / "images"),
        "THREADS": "1",
    }
    command = [
        sys.executable,
        "-c",
        "from localai_sd.cli.app import main; main()",
        "serve",
        "--image-ttl",
        "600",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or up(url), "local-ai serve to start")
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_example_runs_against_the_served_process(serve_process: str, tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(EXAMPLES / "curl_generate.sh")],
        env={**os.environ, "BASE_URL": serve_process},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{serve_process}/generated-images/" in result.stdout
    assert '"param":"size"' in result.stdout.replace(" ", "")
    assert png_size((tmp_path / "sea-otter.png").read_bytes()) == (256, 256)


def test_openai_example_runs_against_the_served_process(serve_process: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "openai_client.py")],
        env={**os.environ, "LOCALAI_URL": f"{serve_process}/v1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert png_size((tmp_path / "lighthouse-1234.png").read_bytes()) == (256, 256)
    assert png_size((tmp_path / "lighthouse-1235.png").read_bytes()) == (256, 256)
    assert "rejected: size" in result.stdout and f"url: {serve_process}/generated-images/" in result.stdout


def test_serve_help_lists_localai_flags_and_env_vars() -> None:
    result = CliRunner().invoke(build_app(), ["serve", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for flag in (
        "--address",
        "--models-path",
        "--image-path",
        "--threads",
        "--api-keys",
        "--galleries",
        "--preload-models",
        "--preload-models-config",
        "--upload-limit",
        "--cors",
        "--base-url",
        "--image-ttl",
        "--queue-size",
        "--max-loaded-models",
        "--allowed-hosts",
        "--forwarded-allow-ips",
        "--allow-local-dir",
        "--allow-private-hosts",
        "--allow-unverified",
        "--max-memory",
        "--mode",
        "--header-timeout",
        "--limit-concurrency",
    ):
        assert flag in result.output, flag
    for env in ("ADDRESS", "MODELS_PATH", "IMAGE_PATH", "API_KEY", "GALLERIES", "UPLOAD_LIMIT", "BASE_URL"):
        assert env in result.output, env


def test_serve_rejects_a_bad_address_with_one_line() -> None:
    result = CliRunner().invoke(build_app(), ["serve", "--address", "nonsense"])
    assert result.exit_code == 1 and "HOST:PORT" in result.output


def test_serve_mode_setting_follows_the_intake_rule() -> None:
    from localai_sd.cli.serve import build_settings
    from localai_sd.errors import InvalidRequest

    assert build_settings({}, mode="auto").default_mode == "auto"
    assert build_settings({}, mode="2").default_mode == 1
    assert build_settings({}, mode="0").default_mode == 0
    with pytest.raises(InvalidRequest, match="mode 'fast' must be"):
        build_settings({}, mode="fast")
