"""The events of one generation job: plain, frozen, JSON-ready data, independent of threads and processes.

A job publishes ``queued`` (its place in line) while waiting, then ``progress`` per sampling step
(and a ``preview`` PNG when the sampler's x0 estimate is known), and ends with exactly one of
``done``, ``error`` or ``cancelled``. Every consumer reads these: the CLI progress bar, the SSE
route, OpenAI streaming and the studio page. A backend on another machine ships them as
``to_dict``/``from_dict`` dicts. ``Record`` numbers them, so a reader resumes after the last it saw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from localai_sd.errors import InvalidRequest, LocalAISDError, ModelNotFound


@dataclass(frozen=True)
class Queued:
    """The job waits; ``position`` 1 is next in line."""

    kind: ClassVar[str] = "queued"
    position: int


@dataclass(frozen=True)
class Progress:
    """Step ``step`` of ``steps`` of image ``image`` (1-based) of ``images`` is done; step 0 = started."""

    kind: ClassVar[str] = "progress"
    image: int
    images: int
    step: int
    steps: int
    #: Estimated seconds left for the whole job, None before the first step.
    eta_seconds: float | None = None


@dataclass(frozen=True)
class Preview:
    """A small PNG of the sampler's current x0 estimate for image ``image`` after ``step``."""

    kind: ClassVar[str] = "preview"
    image: int
    step: int
    steps: int
    width: int
    height: int
    png_b64: str


@dataclass(frozen=True)
class Done:
    """The job finished; ``seeds`` of its images, in order, each ``width`` x ``height``."""

    kind: ClassVar[str] = "done"
    seeds: tuple[int, ...]
    width: int
    height: int


@dataclass(frozen=True)
class Error:
    """The job failed: OpenAI's error fields."""

    kind: ClassVar[str] = "error"
    message: str
    type: str = "server_error"
    param: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class Cancelled:
    """The job was cancelled (by a client, a disconnect, or the server shutting down)."""

    kind: ClassVar[str] = "cancelled"
    message: str
    code: str | None = "cancelled"


Event = Queued | Progress | Preview | Done | Error | Cancelled
KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in (Queued, Progress, Preview, Done, Error, Cancelled)}
FINAL_KINDS = frozenset({Done.kind, Error.kind, Cancelled.kind})


@dataclass(frozen=True)
class Record:
    """An event with its sequence number in the job's stream (1, 2, ...)."""

    seq: int
    event: Event


def is_final(event: Event) -> bool:
    """True for the job's last event."""
    return event.kind in FINAL_KINDS


def to_dict(event: Event) -> dict[str, Any]:
    """``{"type": kind, **fields}``, JSON-ready (tuples become lists)."""
    data = asdict(event)
    return {"type": event.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}}


def from_dict(data: dict[str, Any], kind: str | None = None) -> Event:
    """The event ``to_dict`` made; unknown keys are ignored. An ``error`` event's own ``type`` field hides
    its kind in that dict, so a store that keeps the kind apart passes it as ``kind``."""
    cls = KINDS[kind or data["type"]]
    values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
    if "seeds" in values:
        values["seeds"] = tuple(values["seeds"])
    return cls(**values)


def error_event(exc: BaseException) -> Error:
    """OpenAI's error fields for a failed job: client mistakes are ``invalid_request_error``."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, LocalAISDError):
        client = isinstance(exc, (InvalidRequest, ModelNotFound))
        return Error(message, "invalid_request_error" if client else "server_error", exc.param, exc.code)
    return Error(message)


def eta_seconds(elapsed: float, done: int, total: int) -> float | None:
    """Seconds left at the mean pace so far: elapsed / done x (total - done); None before any step."""
    if done <= 0 or total <= 0:
        return None
    return round(elapsed / done * max(0, total - done), 1)


def partial_steps(total: int, partial_images: int) -> tuple[int, ...]:
    """The (1-based, over all images) steps that become partial images: ceil(k N / (p + 1)), k = 1..p."""
    if partial_images <= 0 or total <= 0:
        return ()
    picks = {
        min(total, max(1, math.ceil(k * total / (partial_images + 1)))) for k in range(1, partial_images + 1)
    }
    return tuple(sorted(picks))
