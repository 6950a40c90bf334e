"""Slowloris against ``local-ai serve``: is ``GET /healthz`` still answered, and how big does the log grow?

Starts ``local-ai serve`` on loopback with a tiny model under ``ulimit -n`` (default 1024), opens
many connections that each send a partial request head and then one more header line every few
seconds (reconnecting when the server closes them), and probes ``GET /healthz`` twice a second
on fresh connections meanwhile. Writes ``benchmarks/results/slowloris-<label>.json``.

    python benchmarks/slowloris.py --label after
    python benchmarks/slowloris.py --label tuned --serve-arg=--header-timeout=5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LOOPBACK = "127.0.0.1"
PROBE_INTERVAL_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 5.0
START_TIMEOUT_SECONDS = 60.0
LOG_HEAD_BYTES = 3000


@dataclass
class Attack:
    """Counters of the slowloris side."""

    connects: int = 0
    connect_failures: int = 0
    closed_by_server: int = 0
    open_now: int = 0
    peak_open: int = 0


@dataclass
class Probe:
    """One ``GET /healthz``: when (seconds into the attack), answered or not, latency, status."""

    at: float
    ok: bool
    seconds: float
    status: int | None = None
    error: str | None = None


@dataclass
class Outcome:
    """What one run measured."""

    label: str
    connections: int
    seconds: float
    nofile: int
    header_interval: float
    serve_args: list[str]
    attack: Attack
    probes: list[Probe] = field(default_factory=list)
    log_bytes: int = 0
    log_too_many_open_files: int = 0
    #: The first lines the attack added to the log.
    log_head: str = ""
    server_alive: bool = True


def without_paths(text: str) -> str:
    """Log text with file paths cut to their last part (results files keep no machine paths)."""
    return re.sub(r'File "[^"]*/([^/"]+)"', r'File "\1"', text)


def lscpu() -> dict[str, str]:
    """``lscpu``'s model name and flags (empty when lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {
        "model": fields.get("Model name", "").strip(),
        "flags": fields.get("Flags", "").strip(),
        "cpus": fields.get("CPU(s)", "").strip(),
    }


async def get_healthz(port: int) -> tuple[int, float]:
    """One ``GET /healthz`` on a new connection: (status, seconds)."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(
            f"GET /healthz HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("closed without an answer")
        return int(status_line.split()[1]), time.monotonic() - start
    finally:
        writer.close()


async def probe(port: int, started: float) -> Probe:
    """A bounded ``GET /healthz``."""
    at = time.monotonic() - started
    t0 = time.monotonic()
    try:
        status, seconds = await asyncio.wait_for(get_healthz(port), PROBE_TIMEOUT_SECONDS)
    except (OSError, TimeoutError, ConnectionError, ValueError, IndexError) as exc:
        return Probe(at, False, time.monotonic() - t0, error=type(exc).__name__)
    return Probe(at, status == 200, seconds, status=status)


async def slow_client(port: int, interval: float, stop: asyncio.Event, attack: Attack) -> None:
    """Hold one connection with an unfinished request head; reconnect whenever the server drops it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            attack.connect_failures += 1
            await asyncio.sleep(interval)
            continue
        attack.connects += 1
        attack.open_now += 1
        attack.peak_open = max(attack.peak_open, attack.open_now)
        try:
            writer.write(f"GET /healthz HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n".encode())
            line = 0
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(1024), interval)
                except TimeoutError:
                    line += 1
                    writer.write(f"X-Slow-{line}: x\r\n".encode())
                    continue
                if not data:
                    attack.closed_by_server += 1
                    break
        except OSError:
            attack.closed_by_server += 1
        finally:
            attack.open_now -= 1
            writer.close()


async def attack_and_probe(port: int, outcome: Outcome) -> None:
    """Run the slow clients for the configured time while probing /healthz."""
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(slow_client(port, outcome.header_interval, stop, outcome.attack))
        for _ in range(outcome.connections)
    ]
    started = time.monotonic()
    while time.monotonic() - started < outcome.seconds:
        outcome.probes.append(await probe(port, started))
        await asyncio.sleep(PROBE_INTERVAL_SECONDS)
    stop.set()
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)


def install_tiny_model(models: Path) -> None:
    """A tiny ``stablediffusion`` model, so the server starts as a user would run it."""
    from localai_sd.testing.tiny import build_tiny_assets

    build_tiny_assets(models / "stablediffusion_assets")
    (models / "stablediffusion.yaml").write_text(
        "name: stablediffusion\nbackend: stablediffusion\nparameters:\n  model: stablediffusion_assets\n",
        encoding="utf-8",
    )


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def start_server(workdir: Path, port: int, nofile: int, serve_args: list[str], log: Path) -> subprocess.Popen:
    """``local-ai serve`` with RLIMIT_NOFILE = ``nofile``, its output to ``log``."""
    models = workdir / "models"
    install_tiny_model(models)
    env = {
        **os.environ,
        "ADDRESS": f"{LOOPBACK}:{port}",
        "MODELS_PATH": str(models),
        "GALLERIES": "[]",
        "THREADS": "1",
    }

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    command = [sys.executable, "-c", "from localai_sd.cli.app import main; main()", "serve", *serve_args]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit_files
        )


def wait_ready(port: int, process: subprocess.Popen) -> None:
    """Poll /healthz until it answers 200."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("local-ai serve exited during start-up")
        if asyncio.run(probe(port, time.monotonic())).ok:
            return
        time.sleep(0.2)
    raise RuntimeError("local-ai serve did not start")


def stop_server(process: subprocess.Popen) -> None:
    """SIGINT, then SIGKILL after 30 s."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run(outcome: Outcome) -> Outcome:
    """Start the server, attack it, record the probes and the log size."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, outcome.connections * 2 + 256)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port = free_port()
        log = workdir / "serve.log"
        process = start_server(workdir, port, outcome.nofile, outcome.serve_args, log)
        try:
            wait_ready(port, process)
            size_before = log.stat().st_size
            asyncio.run(attack_and_probe(port, outcome))
            outcome.log_bytes = log.stat().st_size - size_before
            with log.open("rb") as text:
                text.seek(size_before)
                outcome.log_head = without_paths(text.read(LOG_HEAD_BYTES).decode("utf-8", "replace"))
            outcome.server_alive = process.poll() is None
        finally:
            stop_server(process)
            with log.open("rb") as text:
                outcome.log_too_many_open_files = sum(line.count(b"Too many open files") for line in text)
    return outcome


def summary(outcome: Outcome) -> dict[str, object]:
    """Probe success rate and latency figures."""
    answered = [p.seconds for p in outcome.probes if p.ok]
    return {
        "probes": len(outcome.probes),
        "answered": len(answered),
        "answered_share": round(len(answered) / max(1, len(outcome.probes)), 3),
        "latency_median_s": round(statistics.median(answered), 4) if answered else None,
        "latency_max_s": round(max(answered), 4) if answered else None,
        "log_bytes": outcome.log_bytes,
        "log_too_many_open_files_lines": outcome.log_too_many_open_files,
        "server_alive": outcome.server_alive,
    }


def main(argv: list[str]) -> int:
    """Parse arguments, run once, print the summary and write the results JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="run")
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--nofile", type=int, default=1024, help="the server's ulimit -n")
    parser.add_argument("--header-interval", type=float, default=5.0, help="seconds between header lines")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `local-ai serve` argument")
    args = parser.parse_args(argv)
    outcome = run(
        Outcome(
            args.label,
            args.connections,
            args.seconds,
            args.nofile,
            args.header_interval,
            args.serve_arg,
            Attack(),
        )
    )
    document = {
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"lscpu": lscpu(), "python": sys.version.split()[0]},
        "summary": summary(outcome),
        **asdict(outcome),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"slowloris-{args.label}.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(
        json.dumps({"label": args.label, **document["summary"], "attack": asdict(outcome.attack)}, indent=2)
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
