"""``local-ai serve``: run the OpenAI-compatible image server with LocalAI's flag and env var names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from localai_sd.cli.app import handle_errors
from localai_sd.errors import InvalidRequest
from localai_sd.pipeline.request import AUTO, parse_mode
from localai_sd.settings import Settings, parse_api_keys, parse_galleries, parse_list, parse_memory_size

#: LocalAI's ``:8080`` means every interface.
ALL_INTERFACES = "0.0.0.0"
MAX_PORT = 65535


def parse_address(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``:port`` = all interfaces, ``[v6]:port``) into (host, port)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) <= MAX_PORT:
        raise InvalidRequest(
            f"address {text!r} must have the form HOST:PORT (or :PORT), e.g. 127.0.0.1:8080", param="address"
        )
    host = host.strip("[]") or ALL_INTERFACES
    return host, int(port_text)


def check_default_mode(text: str) -> int | str:
    """``--mode``: ``auto`` or a LocalAI mode number, checked by the intake's rule (InvalidRequest otherwise)."""
    fast = parse_mode(text)
    return AUTO if fast is None else int(fast)


def build_settings(
    env: dict[str, str],
    *,
    address: str | None = None,
    models_path: Path | None = None,
    image_path: Path | None = None,
    threads: int | None = None,
    api_keys: str | None = None,
    galleries: str | None = None,
    preload_models: str | None = None,
    preload_models_config: Path | None = None,
    upload_limit: int | None = None,
    cors: list[str] | None = None,
    allowed_hosts: str | None = None,
    forwarded_allow_ips: str | None = None,
    header_timeout: float | None = None,
    limit_concurrency: int | None = None,
    base_url: str | None = None,
    image_ttl: int | None = None,
    queue_size: int | None = None,
    max_loaded_models: int | None = None,
    workers: int | None = None,
    low_memory: bool | None = None,
    mode: str | None = None,
    no_studio: bool | None = None,
    lazy_load: bool | None = None,
    max_memory: str | None = None,
    allow_local_dirs: list[Path] | None = None,
    allow_private_hosts: bool | None = None,
    allow_unverified: bool | None = None,
    redis: str | None = None,
) -> Settings:
    """Settings from LocalAI's env vars, then the flags given (flags win)."""
    for name, value in (("threads", threads), ("upload-limit", upload_limit), ("image-ttl", image_ttl)):
        if value is not None and value < 1:
            raise InvalidRequest(f"--{name} must be a positive integer, got {value}", param=name)
    for name, value in (
        ("max-loaded-models", max_loaded_models),
        ("workers", workers),
        ("limit-concurrency", limit_concurrency),
    ):
        if value is not None and value < 1:
            raise InvalidRequest(f"--{name} must be a positive integer, got {value}", param=name)
    if queue_size is not None and queue_size < 0:
        raise InvalidRequest(f"--queue-size must be 0 or more, got {queue_size}", param="queue-size")
    if header_timeout is not None and not header_timeout > 0:
        raise InvalidRequest(
            f"--header-timeout must be positive seconds, got {header_timeout}", param="header-timeout"
        )
    if address is not None:
        parse_address(address)
    return Settings.from_env(
        env,
        address=address,
        models_path=models_path,
        image_path=image_path,
        threads=threads,
        api_keys=parse_api_keys(api_keys) if api_keys else None,
        galleries=parse_galleries(galleries) if galleries else None,
        preload_models=preload_models,
        preload_models_config=preload_models_config,
        upload_limit_mb=upload_limit,
        cors_allow_origins=parse_list(",".join(cors)) if cors else None,
        allowed_hosts=parse_list(allowed_hosts) if allowed_hosts else None,
        forwarded_allow_ips=parse_list(forwarded_allow_ips) if forwarded_allow_ips else None,
        header_timeout_seconds=header_timeout,
        limit_concurrency=limit_concurrency,
        base_url=base_url,
        image_ttl_seconds=image_ttl,
        queue_size=queue_size,
        max_loaded_models=max_loaded_models,
        workers=workers,
        low_memory=low_memory or None,
        default_mode=check_default_mode(mode) if mode is not None else None,
        studio=False if no_studio else None,
        lazy_load=lazy_load or None,
        max_memory_bytes=parse_memory_size(max_memory, "--max-memory") if max_memory else None,
        local_install_dirs=tuple(allow_local_dirs) if allow_local_dirs else None,
        allow_private_hosts=allow_private_hosts or None,
        allow_unverified_installs=allow_unverified or None,
        redis_url=redis,
    )


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""

    @app.command("serve")
    @handle_errors
    def serve(
        address: Annotated[
            str | None,
            typer.Option(envvar="ADDRESS", help="HOST:PORT to listen on [default: 127.0.0.1:8080]"),
        ] = None,
        models_path: Annotated[
            Path | None,
            typer.Option(envvar="MODELS_PATH", help="Model configs and assets [default: ./models]"),
        ] = None,
        image_path: Annotated[
            Path | None,
            typer.Option(
                envvar="IMAGE_PATH", help="URL-mode images [default: <models-path>/generated-images]"
            ),
        ] = None,
        threads: Annotated[
            int | None, typer.Option(envvar="THREADS", help="ncnn threads [default: all cores]")
        ] = None,
        api_keys: Annotated[
            str | None, typer.Option(envvar="API_KEY", help="Comma-separated API keys; none = open server")
        ] = None,
        galleries: Annotated[
            str | None, typer.Option(envvar="GALLERIES", help='JSON list: [{"name": ..., "url": ...}]')
        ] = None,
        preload_models: Annotated[
            str | None,
            typer.Option(envvar="PRELOAD_MODELS", help="JSON list of install requests to run first"),
        ] = None,
        preload_models_config: Annotated[
            Path | None,
            typer.Option(envvar="PRELOAD_MODELS_CONFIG", help="YAML/JSON file of install requests"),
        ] = None,
        upload_limit: Annotated[
            int | None, typer.Option(envvar="UPLOAD_LIMIT", help="Request body limit in MB [default: 15]")
        ] = None,
        cors: Annotated[
            list[str] | None,
            typer.Option(
                "--cors",
                "--cors-allow-origins",
                envvar="CORS_ALLOW_ORIGINS",
                help="Web page origin allowed to call the API, e.g. https://ui.example (repeat or comma-list;"
                " '*' lets any page read, not change) [default: none]",
            ),
        ] = None,
        allowed_hosts: Annotated[
            str | None,
            typer.Option(
                envvar="ALLOWED_HOSTS",
                help="Comma-separated Host names to answer besides localhost and IPs ('*' = any)",
            ),
        ] = None,
        forwarded_allow_ips: Annotated[
            str | None,
            typer.Option(
                envvar="FORWARDED_ALLOW_IPS",
                help="Proxy IPs/networks whose X-Forwarded-* headers are trusted [default: none]",
            ),
        ] = None,
        header_timeout: Annotated[
            float | None,
            typer.Option(
                envvar="HEADER_TIMEOUT",
                help="Seconds to send a request head; longest body pause [default: 10]",
            ),
        ] = None,
        limit_concurrency: Annotated[
            int | None,
            typer.Option(
                envvar="LIMIT_CONCURRENCY",
                help="Most open connections; past it the oldest idle one is closed [default: ulimit -n - 128]",
            ),
        ] = None,
        base_url: Annotated[
            str | None,
            typer.Option(
                envvar="BASE_URL", help="Public URL for image links behind a proxy, e.g. https://x/sd"
            ),
        ] = None,
        image_ttl: Annotated[
            int | None, typer.Option(envvar="IMAGE_TTL", help="Seconds URL images live [default: 3600]")
        ] = None,
        queue_size: Annotated[
            int | None, typer.Option(envvar="QUEUE_SIZE", help="Waiting generations before 429 [default: 16]")
        ] = None,
        max_loaded_models: Annotated[
            int | None,
            typer.Option(envvar="MAX_LOADED_MODELS", help="Models kept warm in memory [default: 1]"),
        ] = None,
        workers: Annotated[
            int | None,
            typer.Option(
                envvar="GENERATION_WORKERS", help="Parallel generations [default: 1; ncnn uses all cores]"
            ),
        ] = None,
        low_memory: Annotated[
            bool,
            typer.Option(
                "--low-memory", envvar="LOW_MEMORY", help="Less peak memory, slower decode (see README)."
            ),
        ] = False,
        no_studio: Annotated[
            bool, typer.Option("--no-studio", help="Do not serve the studio web page at / (STUDIO=false).")
        ] = False,
        lazy_load: Annotated[
            bool,
            typer.Option(
                "--lazy-load",
                envvar="LAZY_LOAD",
                help="Load the default model on the first request, not at start (then /readyz is ready at once).",
            ),
        ] = False,
        mode: Annotated[
            str | None,
            typer.Option(
                envvar="MODE",
                help="Default LocalAI mode when a request and its model give none: auto, 0 or 1 [default: auto]",
            ),
        ] = None,
        max_memory: Annotated[
            str | None,
            typer.Option(
                "--max-memory",
                envvar="MAX_MEMORY",
                help="Refuse requests estimated to need more memory, e.g. 12G [default: 85% of RAM]",
            ),
        ] = None,
        allow_local_dirs: Annotated[
            list[Path] | None,
            typer.Option(
                "--allow-local-dir",
                help="Directory /models/apply may install local files from (repeat; env LOCAL_INSTALL_DIRS).",
            ),
        ] = None,
        allow_private_hosts: Annotated[
            bool,
            typer.Option(
                "--allow-private-hosts",
                envvar="ALLOW_PRIVATE_HOSTS",
                help="Let /models/apply fetch loopback, private and link-local hosts (a LAN mirror).",
            ),
        ] = False,
        allow_unverified: Annotated[
            bool,
            typer.Option(
                "--allow-unverified",
                envvar="ALLOW_UNVERIFIED_INSTALLS",
                help="Let /models/apply install gallery files that have no sha256.",
            ),
        ] = False,
        redis: Annotated[
            str | None,
            typer.Option(
                "--redis",
                envvar="REDIS_URL",
                help="Enqueue generations in this Redis for `local-ai worker`s (redis://host:6379/0) "
                "instead of running them here [default: run here]",
            ),
        ] = None,
    ) -> None:
        """Run the OpenAI-compatible image API (POST /v1/images/generations) and model management."""
        import uvicorn

        from localai_sd.server.app import create_app
        from localai_sd.server.http_limits import quiet_accept_errors, server_config

        settings = build_settings(
            dict(os.environ),
            address=address,
            models_path=models_path,
            image_path=image_path,
            threads=threads,
            api_keys=api_keys,
            galleries=galleries,
            preload_models=preload_models,
            preload_models_config=preload_models_config,
            upload_limit=upload_limit,
            cors=cors,
            allowed_hosts=allowed_hosts,
            forwarded_allow_ips=forwarded_allow_ips,
            header_timeout=header_timeout,
            limit_concurrency=limit_concurrency,
            base_url=base_url,
            image_ttl=image_ttl,
            queue_size=queue_size,
            max_loaded_models=max_loaded_models,
            workers=workers,
            low_memory=low_memory,
            mode=mode,
            no_studio=no_studio,
            lazy_load=lazy_load,
            max_memory=max_memory,
            allow_local_dirs=allow_local_dirs,
            allow_private_hosts=allow_private_hosts,
            allow_unverified=allow_unverified,
            redis=redis,
        )
        host, port = parse_address(settings.address)
        config = server_config(
            create_app(settings), host, port, settings.header_timeout_seconds, settings.limit_concurrency
        )
        quiet_accept_errors()
        uvicorn.Server(config).run()
