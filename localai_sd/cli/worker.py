"""``local-ai worker``: join a generation cluster, taking jobs for the models held here from Redis."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from localai_sd.cli.app import handle_errors, stderr_console
from localai_sd.errors import InvalidRequest
from localai_sd.settings import Settings


def build_settings(
    env: dict[str, str],
    *,
    redis: str | None,
    models_path: Path | None,
    models: list[str],
    threads: int | None,
    worker_ttl: int | None,
    low_memory: bool,
) -> Settings:
    """Settings from the environment, then the flags; a Redis URL is required."""
    settings = Settings.from_env(
        env,
        redis_url=redis,
        models_path=models_path,
        threads=threads,
        worker_ttl_seconds=worker_ttl,
        max_loaded_models=max(1, len(models)),
        low_memory=low_memory or None,
    )
    if not settings.redis_url:
        raise InvalidRequest(
            "a worker needs the cluster's Redis: pass --redis redis://host:6379/0 or set REDIS_URL",
            param="redis",
        )
    if settings.worker_ttl_seconds < 16:
        raise InvalidRequest(
            f"--worker-ttl must be at least 16 seconds, got {settings.worker_ttl_seconds}", param="worker-ttl"
        )
    return settings


def register(app: typer.Typer) -> None:
    """Add the ``worker`` command to ``app``."""

    @app.command("worker")
    @handle_errors
    def worker(
        redis: Annotated[
            str | None,
            typer.Option("--redis", envvar="REDIS_URL", help="The cluster's Redis, e.g. redis://host:6379/0"),
        ] = None,
        models_path: Annotated[
            Path | None,
            typer.Option(envvar="MODELS_PATH", help="Model configs and assets [default: ./models]"),
        ] = None,
        model: Annotated[
            list[str] | None,
            typer.Option("--model", help="A model this worker holds (repeat) [default: stablediffusion]"),
        ] = None,
        threads: Annotated[
            int | None, typer.Option(envvar="THREADS", help="ncnn threads [default: all cores]")
        ] = None,
        worker_ttl: Annotated[
            int | None,
            typer.Option(
                envvar="WORKER_TTL",
                help="Seconds this worker stays registered without a heartbeat; a dead worker's job is "
                "retried after its job timeout + 60 s [default: 45]",
            ),
        ] = None,
        name: Annotated[
            str | None, typer.Option(help="Worker name in job results and logs [default: host.pid]")
        ] = None,
        low_memory: Annotated[
            bool, typer.Option("--low-memory", envvar="LOW_MEMORY", help="Less peak memory, slower decode.")
        ] = False,
    ) -> None:
        """Run generation jobs from the cluster's Redis queues (one per model), one at a time, models warm."""
        from localai_sd.jobs.rq_worker import default_name, serve_forever
        from localai_sd.server.app import default_loader
        from localai_sd.server.models_cache import ModelCache

        settings = build_settings(
            dict(os.environ),
            redis=redis,
            models_path=models_path,
            models=model or [],
            threads=threads,
            worker_ttl=worker_ttl,
            low_memory=low_memory,
        )
        models = model or [settings.default_model]
        name = name or default_name()
        stderr_console().print(f"worker {name}: loading {', '.join(models)} and listening for jobs")
        serve_forever(settings, models, ModelCache(default_loader(settings), len(models)), name=name)
