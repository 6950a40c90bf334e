"""The one settings object shared by the CLI, the server and the installer.

Field names follow LocalAI's flags; ``Settings.from_env`` reads LocalAI's
environment variable names. Nothing here touches the disk at import time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from localai_sd.errors import InvalidRequest

DEFAULT_GALLERY_URL = "github:go-skynet/model-gallery/index.yaml"
DEFAULT_MODEL = "stablediffusion"
DEFAULT_ADDRESS = "127.0.0.1:8080"
#: OpenAI: "URLs are only valid for 60 minutes".
DEFAULT_IMAGE_TTL_SECONDS = 3600
#: LocalAI's Fiber body limit, in MB.
DEFAULT_UPLOAD_LIMIT_MB = 15


@dataclass(frozen=True)
class Gallery:
    """A named gallery index URL, as in LocalAI's ``GALLERIES`` JSON."""

    name: str
    url: str


@dataclass(frozen=True)
class Settings:
    """Everything configurable about localai-sd, in one immutable object."""

    models_path: Path = field(default_factory=lambda: Path("models"))
    #: Where URL-mode images go; None means ``<models_path>/generated-images``.
    image_path: Path | None = None
    address: str = DEFAULT_ADDRESS
    #: ncnn threads; None means one per core.
    threads: int | None = None
    api_keys: tuple[str, ...] = ()
    galleries: tuple[Gallery, ...] = (Gallery("model-gallery", DEFAULT_GALLERY_URL),)
    #: URL prefix rewrites for air-gapped installs: (prefix, replacement) pairs.
    mirrors: tuple[tuple[str, str], ...] = ()
    preload_models: str | None = None
    preload_models_config: Path | None = None
    upload_limit_mb: int = DEFAULT_UPLOAD_LIMIT_MB
    #: Browser origins (``https://ui.example``) whose pages may call the API; ``*`` lets any page
    #: read answers, but state-changing requests still need a listed origin (README "Security").
    cors_allow_origins: tuple[str, ...] = ()
    #: Host names accepted in ``Host`` besides localhost names and IP literals; ``*`` accepts any.
    allowed_hosts: tuple[str, ...] = ()
    #: Peers (IPs, CIDR networks, ``*``) whose ``X-Forwarded-*`` headers are trusted; none by default.
    forwarded_allow_ips: tuple[str, ...] = ()
    #: Seconds a client has to send a request head, and the longest pause while sending a body.
    header_timeout_seconds: float = 10.0
    #: Most open connections; None derives it from the open-file limit (``ulimit -n``).
    limit_concurrency: int | None = None
    #: Public base URL for image links behind a proxy, e.g. https://example.com/sd
    base_url: str | None = None
    image_ttl_seconds: int = DEFAULT_IMAGE_TTL_SECONDS
    default_model: str = DEFAULT_MODEL
    #: LocalAI's ``mode`` when a request and its model config give none: 0, a positive integer, or ``auto``
    #: (fast convolutions when the memory budget allows them at the request's size).
    default_mode: int | str = "auto"
    default_steps: int = 15
    #: Reload the text encoder per request and decode with plain convolutions, released after use:
    #: about 1.2 GB less peak memory for a slower decode (benchmarks/RESULTS.md).
    low_memory: bool = False
    #: How many loaded pipelines the server keeps warm.
    max_loaded_models: int = 1
    #: Generation workers; ncnn already uses every core, so one by default.
    workers: int = 1
    #: Requests waiting for a worker before the server answers 429.
    queue_size: int = 16
    #: Longest silence on an SSE stream (job events, OpenAI streaming) before a keep-alive comment, seconds.
    sse_keepalive_seconds: float = 15.0
    #: Serve the studio page at ``/`` (``--no-studio`` / ``STUDIO=false`` turn it off).
    studio: bool = True
    max_prompt_chars: int = 4000
    #: Cap on 77-token chunks per prompt (each BREAK starts one; each is one more text-encoder run).
    max_prompt_chunks: int = 8
    #: Cap on n * steps of one request.
    max_n_steps: int = 1000
    #: Cap on width * height of one request (1024x1024 by default).
    max_pixels: int = 1024 * 1024
    #: Cap on n * steps * width * height of one request (10 images of 100 steps at 512x512).
    max_pixel_steps: int = 10 * 100 * 512 * 512
    #: Peak resident memory a request may need (estimated, localai_sd/pipeline/memory.py); None derives it
    #: from the machine's RAM when the server or the CLI starts (MAX_MEMORY, --max-memory, e.g. "12G").
    max_memory_bytes: int | None = None
    #: Download timeouts, seconds.
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    download_retries: int = 3
    #: Directories installs over HTTP may read local files from (``LOCAL_INSTALL_DIRS``).
    local_install_dirs: tuple[Path, ...] = ()
    #: Installs over HTTP may fetch loopback/private/link-local hosts (``ALLOW_PRIVATE_HOSTS``).
    allow_private_hosts: bool = False
    #: Installs over HTTP may fetch gallery files without a sha256 (``ALLOW_UNVERIFIED_INSTALLS``).
    allow_unverified_installs: bool = False
    #: Install jobs run at once, and waiting before the server answers 429.
    install_workers: int = 2
    install_queue_size: int = 16
    #: Finished install jobs kept for ``/models/jobs``: at most this many, for at most this long.
    install_jobs_kept: int = 100
    install_job_ttl_seconds: int = 3600
    #: Redis of a generation cluster (``redis://host:6379/0``): ``serve`` enqueues jobs there for ``local-ai
    #: worker`` processes instead of running them; None keeps the in-process queue (``REDIS_URL``).
    redis_url: str | None = None
    #: Load the default model's nets on the first request instead of at start-up (before /readyz is ready).
    lazy_load: bool = False
    #: Seconds a worker's registration lives without a heartbeat (RQ ``--worker-ttl``); an idle worker also
    #: looks for abandoned jobs every ``worker_ttl - 15`` seconds (``WORKER_TTL``).
    worker_ttl_seconds: int = 45
    #: A cluster job's ``job_timeout`` is this floor plus 2 x its estimated work (``JOB_TIMEOUT_FLOOR``).
    job_timeout_floor_seconds: int = 300
    #: Seconds per sampling step at 512x512 that the estimate uses, scaled by the pixel count (``STEP_SECONDS``).
    step_seconds_512: float = 12.0
    #: Runs after the first when a worker dies mid-job (at-least-once; seeds make a re-run identical).
    job_retries: int = 2
    #: Seconds a finished cluster job (its images and events) stays in Redis; at least an hour.
    job_result_ttl_seconds: int = 3600
    #: Seconds past its ``job_timeout`` after which a running job whose worker died counts as abandoned and is
    #: retried (RQ's SimpleWorker uses 60; the job itself is killed at its timeout) (``JOB_GRACE``).
    job_grace_seconds: int = 60
    #: Seconds a queued cluster job may wait while no live worker holds its model, then it fails.
    no_worker_timeout_seconds: float = 60.0

    @property
    def resolved_image_path(self) -> Path:
        """The image directory, defaulting to a folder under the models path."""
        return self.image_path if self.image_path is not None else self.models_path / "generated-images"

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced; None values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from LocalAI's environment variable names, then explicit overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if v := env.get("MODELS_PATH"):
            values["models_path"] = Path(v)
        if v := env.get("IMAGE_PATH"):
            values["image_path"] = Path(v)
        if v := env.get("ADDRESS"):
            values["address"] = v
        if v := env.get("THREADS"):
            values["threads"] = parse_positive_int(v, "THREADS")
        if v := env.get("API_KEY"):
            values["api_keys"] = parse_api_keys(v)
        if v := env.get("GALLERIES"):
            values["galleries"] = parse_galleries(v)
        if v := env.get("LOCALAI_MIRRORS"):
            values["mirrors"] = parse_mirrors(v)
        for name in ("CORS_ALLOW_ORIGINS", "ALLOWED_HOSTS", "FORWARDED_ALLOW_IPS"):
            if v := env.get(name):
                values[name.lower()] = parse_list(v)
        if v := env.get("LIMIT_CONCURRENCY"):
            values["limit_concurrency"] = parse_positive_int(v, "LIMIT_CONCURRENCY")
        if v := env.get("PRELOAD_MODELS"):
            values["preload_models"] = v
        if v := env.get("PRELOAD_MODELS_CONFIG"):
            values["preload_models_config"] = Path(v)
        if v := env.get("UPLOAD_LIMIT"):
            values["upload_limit_mb"] = parse_positive_int(v, "UPLOAD_LIMIT")
        if v := env.get("MAX_PROMPT_CHUNKS"):
            values["max_prompt_chunks"] = parse_positive_int(v, "MAX_PROMPT_CHUNKS")
        if env.get("LOW_MEMORY", "").lower() in ("1", "true", "yes"):
            values["low_memory"] = True
        if v := env.get("BASE_URL"):
            values["base_url"] = v
        if v := env.get("MAX_MEMORY"):
            values["max_memory_bytes"] = parse_memory_size(v, "MAX_MEMORY")
        if v := env.get("LOCAL_INSTALL_DIRS"):
            values["local_install_dirs"] = tuple(Path(d) for d in v.split(os.pathsep) if d.strip())
        if env.get("ALLOW_PRIVATE_HOSTS", "").lower() in ("1", "true", "yes"):
            values["allow_private_hosts"] = True
        if env.get("ALLOW_UNVERIFIED_INSTALLS", "").lower() in ("1", "true", "yes"):
            values["allow_unverified_installs"] = True
        if v := env.get("SSE_KEEPALIVE"):
            values["sse_keepalive_seconds"] = float(parse_positive_int(v, "SSE_KEEPALIVE"))
        if env.get("STUDIO", "").lower() in ("0", "false", "no"):
            values["studio"] = False
        if v := env.get("REDIS_URL"):
            values["redis_url"] = v
        if env.get("LAZY_LOAD", "").lower() in ("1", "true", "yes"):
            values["lazy_load"] = True
        for name, key in CLUSTER_INT_ENV:
            if v := env.get(name):
                values[key] = parse_positive_int(v, name)
        if v := env.get("STEP_SECONDS"):
            values["step_seconds_512"] = parse_positive_float(v, "STEP_SECONDS")
        if v := env.get("NO_WORKER_TIMEOUT"):
            values["no_worker_timeout_seconds"] = parse_positive_float(v, "NO_WORKER_TIMEOUT")
        if v := env.get("JOB_RETRIES"):
            values["job_retries"] = parse_count(v, "JOB_RETRIES")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


#: Integer cluster settings read from the environment: (variable, field).
CLUSTER_INT_ENV = (
    ("WORKER_TTL", "worker_ttl_seconds"),
    ("JOB_TIMEOUT_FLOOR", "job_timeout_floor_seconds"),
    ("JOB_RESULT_TTL", "job_result_ttl_seconds"),
    ("JOB_GRACE", "job_grace_seconds"),
)


def parse_count(text: str, name: str) -> int:
    """Parse a whole number of 0 or more, naming the setting on failure."""
    if not text.strip().isdigit():
        raise InvalidRequest(f"{name} must be a whole number of 0 or more, got {text!r}", param=name)
    return int(text)


def parse_positive_float(text: str, name: str) -> float:
    """Parse a positive number setting, naming the setting on failure."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise InvalidRequest(f"{name} must be a positive number, got {text!r}", param=name)
    return value


def parse_positive_int(text: str, name: str) -> int:
    """Parse a positive integer setting, naming the setting on failure."""
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be a positive integer, got {text!r}", param=name) from None
    if value < 1:
        raise InvalidRequest(f"{name} must be a positive integer, got {value}", param=name)
    return value


def parse_list(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list, dropping blanks."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_memory_size(text: str, name: str) -> int:
    """Parse a byte count with an optional binary suffix (``12G``, ``800M``, ``12GiB``, ``12884901888``)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = number[-1:] if number[-1:] in units else ""
    try:
        value = float(number[: len(number) - len(unit)]) * units[unit]
    except ValueError:
        value = 0
    if not 0 < value < 1 << 60:
        raise InvalidRequest(
            f"{name} must be a memory size such as 12G, 800M or a byte count, got {text!r}", param=name
        )
    return int(value)


def parse_api_keys(text: str) -> tuple[str, ...]:
    """Parse a comma-separated API key list, as LocalAI's ``API_KEY``."""
    return tuple(k.strip() for k in text.split(",") if k.strip())


def parse_galleries(text: str) -> tuple[Gallery, ...]:
    """Parse LocalAI's ``GALLERIES`` JSON: ``[{"name": ..., "url": ...}]``."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"galleries must be a JSON list of {{name, url}}: {exc}", param="galleries"
        ) from None
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("url"), str)
        for i in items
    ):
        raise InvalidRequest(
            f'galleries must be a JSON list of {{"name": str, "url": str}}, got {text!r}', param="galleries"
        )
    return tuple(Gallery(i["name"], i["url"]) for i in items)


def parse_mirrors(text: str) -> tuple[tuple[str, str], ...]:
    """Parse ``PREFIX=REPLACEMENT`` pairs separated by commas (``LOCALAI_MIRRORS``)."""
    pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        prefix, sep, replacement = item.partition("=")
        if not sep or not prefix or not replacement:
            raise InvalidRequest(
                f"mirror {item!r} must have the form PREFIX=REPLACEMENT, "
                "e.g. https://github.com/=http://mirror.local/gh/",
                param="mirrors",
            )
        pairs.append((prefix, replacement))
    return tuple(pairs)
