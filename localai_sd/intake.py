"""One request intake for the CLI, the HTTP routes and future workers: raw values in, a validated and
memory-admitted ``GenerationRequest`` out.

Each field takes the request's own value, else the model config's default (``step``, ``sampler``,
``schedule``, ``cfg_scale``, ``guidance_interval``, ``deepcache_interval``, ``mode``, ``size`` in the model
YAML), else the global default (``localai_sd.pipeline.request.DEFAULTS``). The rules themselves (LocalAI's
``mode``, seed -1, sampler names, sizes, limits) live in ``GenerationRequest.create``; this module decides
which value each field gets, maps ``size: auto``, and resolves ``mode: auto`` against the memory budget.

============  ==============================================================================
``size``      request > (edit: the input image's size fitted to 1024, multiples of 64) > model
              config > 512x512; ``auto`` skips the request's value
``mode``      request > model config > the server's/CLI's default (``auto``): 0 plain, any
              positive integer fast, ``auto`` fast when the estimated peak fits the budget
============  ==============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from localai_sd.errors import InvalidRequest, ModelConfigError
from localai_sd.models import ModelConfig
from localai_sd.pipeline import memory
from localai_sd.pipeline.images_in import fit_size
from localai_sd.pipeline.request import AUTO, DEFAULT_SIZE, DEFAULTS, GenerationRequest, Limits
from localai_sd.pipeline.sampler_names import resolve_sampler

#: Keys a model YAML may set defaults for (LocalAI's names; ``step`` is LocalAI v2's).
CONFIG_FIELDS = (
    "step",
    "sampler",
    "schedule",
    "cfg_scale",
    "guidance_interval",
    "deepcache_interval",
    "mode",
    "size",
)


@dataclass(frozen=True)
class RawRequest:
    """A request's values as the user gave them (CLI options, JSON fields, form fields); None = not given."""

    prompt: str
    negative_prompt: str | None = None
    size: str | None = None
    step: object = None
    mode: object = None
    seed: object = None
    sampler: object = None
    schedule: object = None
    cfg_scale: object = None
    n: object = None
    guidance_interval: object = None
    s_min_uncond: object = None
    s_min_uncond_all: object = None
    deepcache_interval: object = None


def config_defaults(config: ModelConfig | None) -> dict[str, object]:
    """The defaults a model config sets (the keys of CONFIG_FIELDS present in its YAML)."""
    if config is None:
        return {}
    return {key: config.raw[key] for key in CONFIG_FIELDS if config.raw.get(key) is not None}


def is_auto(value: object) -> bool:
    """True for ``auto`` (any case, surrounding spaces ignored)."""
    return isinstance(value, str) and value.strip().lower() == AUTO


def choose_size(
    asked: str | None, defaults: dict[str, object], image_size: tuple[int, int] | None
) -> tuple[str, bool]:
    """The size text to validate, and whether it came from the model config."""
    if asked is not None and not is_auto(asked):
        return asked, False
    if image_size is not None:
        width, height = fit_size(*image_size)
        return f"{width}x{height}", False
    if "size" in defaults:
        return str(defaults["size"]), True
    return DEFAULT_SIZE, False


def build_request(
    raw: RawRequest,
    *,
    config: ModelConfig | None = None,
    limits: Limits | None = None,
    default_mode: object = DEFAULTS["mode"],
    image_size: tuple[int, int] | None = None,
) -> GenerationRequest:
    """The validated request: request value > model config default > global default, for every field.

    ``image_size`` is an edit's input image size (width, height): without a ``size`` (or with ``auto``) the
    output takes it, fitted. ``default_mode`` is the caller's global default (the server's setting).
    A bad value that came from the model config is a ModelConfigError naming the config file.
    """
    defaults = config_defaults(config)
    size, size_from_config = choose_size(raw.size, defaults, image_size)
    values: dict[str, object] = {}
    from_config: set[str] = {"size"} if size_from_config else set()
    for key in (
        "step",
        "mode",
        "sampler",
        "schedule",
        "cfg_scale",
        "guidance_interval",
        "deepcache_interval",
    ):
        value = getattr(raw, key)
        if value is None and key in defaults:
            value = defaults[key]
            from_config.add(key)
        values[key] = value
    if values["mode"] is None:
        values["mode"] = default_mode
    implied = raw.sampler is not None and resolve_sampler(raw.sampler).schedule is not None  # type: ignore[arg-type]
    if implied and raw.schedule is None and "schedule" in from_config:
        values["schedule"] = None  # "DPM++ 2M Karras" in the request beats the config's schedule
    try:
        return GenerationRequest.create(
            raw.prompt,
            negative_prompt=raw.negative_prompt,
            size=size,
            steps=values["step"],  # type: ignore[arg-type]
            mode=values["mode"],  # type: ignore[arg-type]
            seed=raw.seed,  # type: ignore[arg-type]
            sampler=values["sampler"],  # type: ignore[arg-type]
            schedule=values["schedule"],  # type: ignore[arg-type]
            cfg_scale=values["cfg_scale"],  # type: ignore[arg-type]
            n=raw.n,  # type: ignore[arg-type]
            guidance_interval=values["guidance_interval"],  # type: ignore[arg-type]
            s_min_uncond=raw.s_min_uncond,  # type: ignore[arg-type]
            s_min_uncond_all=raw.s_min_uncond_all,  # type: ignore[arg-type]
            deepcache_interval=values["deepcache_interval"],  # type: ignore[arg-type]
            limits=limits,
        )
    except InvalidRequest as exc:
        if config is not None and exc.param in from_config:
            raise ModelConfigError(f"model config {config.config_path.name}: {exc}") from None
        raise


def raw_from(source: object, prompt: str, **overrides: object) -> RawRequest:
    """A RawRequest from any object with same-named attributes (a pydantic body), plus ``overrides``."""
    names = [f.name for f in fields(RawRequest) if f.name != "prompt"]
    values = {name: getattr(source, name, None) for name in names}
    values.update(overrides)
    return RawRequest(prompt, **values)  # type: ignore[arg-type]


def admit(request: GenerationRequest, budget: int | None, setup: memory.Setup) -> GenerationRequest:
    """Resolve ``mode: auto`` (fast when its estimated peak fits ``budget``, else plain), then admit the
    request by memory (decoder tiling, or InvalidRequest naming what to try). No budget: auto is fast."""
    if request.mode_auto:
        fits_fast = (
            budget is None or memory.plan(request.width, request.height, 1, setup, budget).peak <= budget
        )
        request = replace(request, fast=fits_fast)
    if budget is None:
        return request
    return memory.admit(request, budget, setup)


def admit_for(
    request: GenerationRequest,
    budget: int | None,
    *,
    low_memory: bool,
    threads: int | None,
    backend: str,
) -> GenerationRequest:
    """``admit`` with the Setup a StableDiffusion of these settings uses."""
    setup = memory.setup_for(request, low_memory=low_memory, threads=threads, backend=backend)
    return admit(request, budget, setup)
