"""Test helpers for the server tests: a live uvicorn on a loopback port, tiny models, a gated fake pipeline."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI
from PIL import Image

from localai_sd.errors import Cancelled
from localai_sd.models import ModelConfig
from localai_sd.pipeline.pipeline import CancelCheck, GeneratedImage, StepCallback, StepEvent
from localai_sd.pipeline.request import GenerationRequest

LOOPBACK = "127.0.0.1"
#: Generous bound for waits on other threads (never a timing assertion, only a hang guard).
WAIT_SECONDS = 60.0


class _Server(uvicorn.Server):
    """uvicorn without signal handlers (it runs in a test thread)."""

    def install_signal_handlers(self) -> None:
        """Leave signals to pytest."""


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on an ephemeral loopback port in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on", proxy_headers=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT_SECONDS)
        sock.close()


def png_size(data: bytes) -> tuple[int, int]:
    """Decode PNG bytes with Pillow and return (width, height)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.format == "PNG"
        return image.size


def solid_png(width: int, height: int, seed: int) -> bytes:
    """A PNG of one colour derived from ``seed`` (what the fake pipeline returns)."""
    image = Image.new("RGB", (width, height), (seed % 256, (seed >> 8) % 256, 7))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass
class GatedPipeline:
    """A fake pipeline for timing-controlled tests: each step waits until the test opens the gate.

    It honours the real contract: ``on_step`` per step, ``should_cancel`` polled between steps,
    ``Cancelled`` raised when it turns true, one PNG per seed.
    """

    gate: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    calls: list[GenerationRequest] = field(default_factory=list)
    cancelled: list[GenerationRequest] = field(default_factory=list)
    closed: bool = False

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> list[GeneratedImage]:
        """Step through the request, blocking on the gate before each step."""
        self.calls.append(request)
        self.started.set()
        images = []
        for index, seed in enumerate(request.seeds):
            for step in range(1, request.steps + 1):
                while not self.gate.wait(0.01):
                    if should_cancel is not None and should_cancel():
                        self.cancelled.append(request)
                        raise Cancelled("cancelled by the test pipeline")
                if on_step is not None:
                    on_step(StepEvent(index, request.n, step, request.steps, seed))
            images.append(
                GeneratedImage(
                    solid_png(request.width, request.height, seed),
                    seed,
                    request.width,
                    request.height,
                    request.prompt,
                )
            )
        return images

    def close(self) -> None:
        """Record the close."""
        self.closed = True


def gated_loader(pipeline: GatedPipeline) -> Callable[[ModelConfig], GatedPipeline]:
    """A loader that always returns ``pipeline``."""

    def load(config: ModelConfig) -> GatedPipeline:
        """Return the shared fake."""
        return pipeline

    return load


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until true; fail after WAIT_SECONDS (a hang guard, not a timing check)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class SlowPipeline:
    """The real pipeline with a pause after every step, so a watcher can see progress (and cancel)."""

    inner: object
    seconds: float

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        **options: object,
    ) -> list[GeneratedImage]:
        """Generate with the real nets (``options`` such as ``edit`` passed on), pausing after each step."""

        def slow_step(event: StepEvent) -> None:
            if on_step is not None:
                on_step(event)
            deadline = time.monotonic() + self.seconds
            while time.monotonic() < deadline and not (should_cancel is not None and should_cancel()):
                time.sleep(0.01)

        return self.inner.generate(  # type: ignore[attr-defined]
            request, on_step=slow_step, should_cancel=should_cancel, **options
        )

    def close(self) -> None:
        """Close the real pipeline."""
        self.inner.close()  # type: ignore[attr-defined]


def slow_loader(seconds: float) -> Callable[[ModelConfig], SlowPipeline]:
    """A loader of real (tiny) pipelines that pause ``seconds`` after each step."""

    def load(config: ModelConfig) -> SlowPipeline:
        """Load the real nets and slow them down."""
        from localai_sd.pipeline.pipeline import StableDiffusion

        return SlowPipeline(StableDiffusion.load(config, threads=1), seconds)

    return load
