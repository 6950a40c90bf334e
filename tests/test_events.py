"""Job events as data: the log's numbering, preview thinning, partial-image steps, ETA, error mapping, and the queue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localai_sd.errors import InvalidRequest, QueueFull
from localai_sd.jobs import events as ev
from localai_sd.jobs.log import EventLog
from localai_sd.models import ModelConfig
from localai_sd.pipeline.pipeline import StepEvent
from localai_sd.pipeline.request import GenerationRequest
from localai_sd.server.jobs import GenerationJob, GenerationQueue


def preview(step: int) -> ev.Preview:
    return ev.Preview(1, step, 10, 8, 8, f"png{step}")


def test_log_numbers_events_and_keeps_only_the_newest_preview_plus_kept_steps() -> None:
    log = EventLog(keep_steps=frozenset({2}))
    log.append(ev.Queued(1))
    for step in range(1, 5):
        log.append(ev.Progress(1, 1, step, 10))
        log.append(preview(step), global_step=step)
    kept = [r.event.step for r in log.since() if isinstance(r.event, ev.Preview)]
    assert kept == [2, 4]
    seqs = [r.seq for r in log.since()]
    assert seqs == sorted(seqs) and seqs[0] == 1 and seqs[-1] == 9
    assert [r.seq for r in log.since(7)] == [8, 9]


def test_nothing_is_added_after_the_final_event() -> None:
    log = EventLog()
    log.append(ev.Cancelled("stop"))
    assert log.append(ev.Progress(1, 1, 1, 1)) is None and log.finished()
    assert isinstance(log.last(), ev.Cancelled)


def test_partial_steps_spread_evenly_over_all_steps() -> None:
    assert ev.partial_steps(20, 3) == (5, 10, 15)
    assert ev.partial_steps(3, 2) == (1, 2)
    assert ev.partial_steps(6, 2) == (2, 4)
    assert ev.partial_steps(1, 3) == (1,)
    assert ev.partial_steps(10, 0) == ()


def test_eta_is_the_mean_pace_times_the_steps_left() -> None:
    assert ev.eta_seconds(10.0, 2, 10) == 40.0
    assert ev.eta_seconds(1.0, 0, 10) is None


def test_errors_keep_openai_fields() -> None:
    bad = ev.error_event(InvalidRequest("size 100x64 must be multiples of 64", param="size"))
    assert (bad.type, bad.param) == ("invalid_request_error", "size")
    assert ev.error_event(RuntimeError("boom")) == ev.Error("boom", "server_error", None, None)


def test_the_queue_publishes_positions_progress_previews_and_done(tmp_path: Path) -> None:
    config = ModelConfig(
        name="m", backend="stablediffusion", asset_dir=tmp_path, config_path=tmp_path / "m.yaml"
    )
    request = GenerationRequest.create("a cat", size="64x64", steps=2, seed=5)
    latent = np.zeros((4, 8, 8), np.float32)

    def runner(job: GenerationJob) -> list:
        for step in (1, 2):
            job.on_step(StepEvent(0, 1, step, 2, 5, denoised=latent))
        return []

    queue = GenerationQueue(runner, workers=1, max_waiting=2)
    first, second = GenerationJob(config, request), GenerationJob(config, request)
    queue.submit(first)
    queue.submit(second)
    with pytest.raises(QueueFull):
        queue.submit(GenerationJob(config, request))
    assert [r.event for r in queue.events(second.id)] == [ev.Queued(2)]
    queue.start()
    second.future.result(timeout=30)
    queue.stop()
    kinds = [r.event.kind for r in queue.events(second.id)]
    assert kinds[:2] == ["queued", "queued"] and kinds[-1] == "done"
    assert queue.events(second.id)[1].event == ev.Queued(1)
    previews = [r.event for r in queue.events(first.id) if isinstance(r.event, ev.Preview)]
    assert (
        len(previews) == 1 and previews[0].step == 2 and (previews[0].width, previews[0].height) == (64, 64)
    )
