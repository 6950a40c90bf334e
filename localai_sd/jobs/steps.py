"""From the pipeline's ``StepEvent`` callbacks to job events: one adapter for the queue and the CLI."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

from localai_sd.jobs.events import Event, Preview, Progress, eta_seconds
from localai_sd.pipeline.pipeline import StepCallback, StepEvent
from localai_sd.pipeline.preview import preview_png


def global_step(event: StepEvent) -> int:
    """Steps done over all images, 1-based: index x steps + step."""
    return event.index * event.steps + event.step


def progress_of(event: StepEvent, elapsed: float) -> Progress:
    """The ``progress`` event of a step, with the ETA from ``elapsed`` seconds since the job started."""
    eta = eta_seconds(elapsed, global_step(event), event.n * event.steps)
    return Progress(event.index + 1, event.n, event.step, event.steps, eta)


def preview_of(event: StepEvent) -> Preview | None:
    """The ``preview`` event of a step (cheap latent PNG), or None when the x0 estimate is unknown."""
    if event.denoised is None:
        return None
    png, width, height = preview_png(event.denoised)
    return Preview(
        event.index + 1, event.step, event.steps, width, height, base64.b64encode(png).decode("ascii")
    )


def step_listener(
    publish: Callable[[Event, int], None],
    *,
    previews: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> StepCallback:
    """An ``on_step`` callback that publishes ``(event, global step)``: progress, then a preview if asked."""
    started = clock()

    def on_step(event: StepEvent) -> None:
        """Publish this step's events."""
        publish(progress_of(event, clock() - started), global_step(event))
        if previews and (preview := preview_of(event)) is not None:
            publish(preview, global_step(event))

    return on_step
