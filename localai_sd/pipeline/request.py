"""One validated generation request: what the CLI and the HTTP body both become."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localai_sd.errors import InvalidRequest

if TYPE_CHECKING:
    from localai_sd.settings import Settings

#: Latents are 1/8 of the image and the UNet halves them three times, so sides are multiples of 64.
SIZE_MULTIPLE = 64
MIN_SIDE = 64
MAX_SIDE = 1024
MAX_SEED = 2**32 - 1
MAX_N = 10
DEFAULT_STEPS = 15
#: The reference (EdVince diffusion_slover.h) fixes the guidance scale at 7.5.
DEFAULT_CFG_SCALE = 7.5
DEFAULT_SAMPLER = "euler_a"
DEFAULT_SCHEDULE = "default"
DEFAULT_SIZE = "512x512"
#: ``auto``: fast convolutions when the memory budget allows them at the request's size, else plain.
AUTO = "auto"
DEFAULT_MODE = AUTO
#: A1111, sd.cpp and LocalAI spell "a random seed" as -1.
RANDOM_SEED = -1
#: The global defaults of every request field, in one table (a model config's values come before these,
#: a request's own values before both: ``localai_sd/intake.py``).
DEFAULTS: dict[str, object] = {
    "size": DEFAULT_SIZE,
    "step": DEFAULT_STEPS,
    "mode": DEFAULT_MODE,
    "sampler": DEFAULT_SAMPLER,
    "schedule": DEFAULT_SCHEDULE,
    "cfg_scale": DEFAULT_CFG_SCALE,
    "n": 1,
    "guidance_interval": None,
    "s_min_uncond": 0.0,
    "s_min_uncond_all": False,
    "deepcache_interval": 1,
}
#: Characters of prompt and negative prompt together (the server's and the CLI's default).
MAX_PROMPT_CHARS = 4000
#: n x steps of one request.
MAX_N_STEPS = 1000
#: width x height of one image (1024x1024).
MAX_PIXELS = 1024 * 1024
#: n x steps x pixels of one request: 10 images of 100 steps at 512x512 (about 3 hours of UNet steps at
#: ~11 s per 512x512 step on 2 cores, benchmarks/RESULTS.md), the same work as 250 steps at 1024x1024.
MAX_PIXEL_STEPS = 10 * 100 * 512 * 512

#: Five digits per side at most: enough for any size, and int() never sees a 4300-digit number.
_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


def parse_size(text: str, *, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """Parse ``WxH`` into (width, height); both sides multiples of 64 in [64, max_side]."""
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise InvalidRequest(f"size {text!r} must have the form WIDTHxHEIGHT, e.g. 512x512", param="size")
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if side % SIZE_MULTIPLE or not MIN_SIDE <= side <= max_side:
            raise InvalidRequest(
                f"size {text!r} is not supported: width and height must be multiples of "
                f"{SIZE_MULTIPLE} from {MIN_SIDE} to {max_side}",
                param="size",
            )
    return width, height


def split_negative(prompt: str) -> tuple[str, str]:
    """Split LocalAI's ``positive|negative`` prompt at the first ``|``."""
    positive, _, negative = prompt.partition("|")
    return positive, negative


@dataclass(frozen=True)
class Limits:
    """Caps on one request's size and work, shared by the CLI and the server (``Limits.from_settings``)."""

    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_n_steps: int = MAX_N_STEPS
    max_pixels: int = MAX_PIXELS
    max_pixel_steps: int = MAX_PIXEL_STEPS
    max_side: int = MAX_SIDE

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits configured in ``settings``."""
        return cls(
            max_prompt_chars=settings.max_prompt_chars,
            max_n_steps=settings.max_n_steps,
            max_pixels=settings.max_pixels,
            max_pixel_steps=settings.max_pixel_steps,
        )


def check_text(text: str, param: str) -> None:
    """InvalidRequest naming ``param`` unless ``text`` is a string UTF-8 can encode (no lone surrogates)."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{param} must be a string, got {type(text).__name__}", param=param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{param} is not valid Unicode text: character {exc.start} is a lone surrogate "
            f"{text[exc.start]!r}, which UTF-8 cannot encode",
            param=param,
        ) from None


def check_prompt_length(positive: str, negative: str, limit: int, *, negative_field: bool) -> None:
    """Prompt and negative prompt (after the ``|`` split) together hold at most ``limit`` characters."""
    total = len(positive) + len(negative)
    if total > limit:
        raise InvalidRequest(
            f"prompt and negative prompt have {total} characters together ({len(positive)} + "
            f"{len(negative)}); the limit is {limit}",
            param="negative_prompt" if negative_field else "prompt",
        )


def check_limits(request: GenerationRequest, limits: Limits) -> None:
    """Enforce the caps on pixels, on n x steps and on the total work n x steps x pixels."""
    pixels = request.width * request.height
    if pixels > limits.max_pixels:
        raise InvalidRequest(
            f"size {request.size} has {pixels} pixels; the limit is {limits.max_pixels} (max_pixels)",
            param="size",
        )
    work_param = "n" if request.n > 1 else "step"
    if request.n * request.steps > limits.max_n_steps:
        raise InvalidRequest(
            f"n x step = {request.n} x {request.steps} = {request.n * request.steps}; "
            f"the limit is {limits.max_n_steps} (max_n_steps)",
            param=work_param,
        )
    work = request.n * request.steps * pixels
    if work > limits.max_pixel_steps:
        raise InvalidRequest(
            f"n x step x pixels = {request.n} x {request.steps} x {pixels} = {work}; the limit is "
            f"{limits.max_pixel_steps} (max_pixel_steps, e.g. 10 images of 100 steps at 512x512): "
            "ask for fewer images, fewer steps or a smaller size",
            param=work_param,
        )


#: DeepCache intervals accepted: 1 (off) to 10 (the paper reports up to N = 10 for SD 1.5 with PLMS).
MAX_DEEPCACHE_INTERVAL = 10
#: The largest sigma any SD 1.x schedule reaches is about 14.6; bounds above that are accepted but moot.
MAX_GUIDANCE_SIGMA = 1000.0


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_guidance_interval(value: object) -> tuple[float, float] | None:
    """``[lo, hi]`` sigmas with 0 <= lo < hi, or None (guidance at every step)."""
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(_number(v) for v in value)
        or not 0 <= value[0] < value[1] <= MAX_GUIDANCE_SIGMA
    ):
        raise InvalidRequest(
            f"guidance_interval {value!r} must be two sigmas [lo, hi] with 0 <= lo < hi <= {MAX_GUIDANCE_SIGMA:g}, "
            "e.g. [0.28, 5.42] (Kynkäänniemi et al. 2024)",
            param="guidance_interval",
        )
    return float(value[0]), float(value[1])


def check_s_min_uncond(value: object) -> float:
    """A1111's "Negative Guidance minimum sigma": a sigma >= 0 (0 is off)."""
    if value is None:
        return 0.0
    if not _number(value) or not 0 <= value <= MAX_GUIDANCE_SIGMA:  # type: ignore[operator]
        raise InvalidRequest(
            f"s_min_uncond {value!r} must be a sigma from 0 (off) to {MAX_GUIDANCE_SIGMA:g}; A1111 users use 0.5-1",
            param="s_min_uncond",
        )
    return float(value)  # type: ignore[arg-type]


def check_deepcache_interval(value: object) -> int:
    """DeepCache's interval N: an integer from 1 (off) to MAX_DEEPCACHE_INTERVAL."""
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_DEEPCACHE_INTERVAL:
        raise InvalidRequest(
            f"deepcache_interval {value!r} must be an integer from 1 (off) to {MAX_DEEPCACHE_INTERVAL}",
            param="deepcache_interval",
        )
    return value


def parse_mode(value: object) -> bool | None:
    """LocalAI's ``mode``, once: True (fast convolutions) for any positive integer, False for 0, None for
    ``auto`` (decided by the memory budget). Integer strings (CLI, form fields) count as integers."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return None
        if text.isdigit():
            value = int(text)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value > 0
    raise InvalidRequest(
        f"mode {value!r} must be 0 (plain convolutions, least memory), a positive integer (fast "
        f"winograd/sgemm convolutions; LocalAI's docs use 2) or {AUTO!r} (fast when the memory budget allows)",
        param="mode",
    )


def parse_seed(value: object) -> int | None:
    """The seed, or None for a random one (omitted, or -1 as A1111, sd.cpp and LocalAI spell it)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == RANDOM_SEED):
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise InvalidRequest(
            f"seed {value!r} must be an integer from 0 to {MAX_SEED}, or -1 (random)", param="seed"
        )
    return value


def parse_sampler(sampler: object, schedule: object) -> tuple[str, str]:
    """(sampler, schedule) from our names or A1111's/sd.cpp's; a name with a schedule ("DPM++ 2M Karras")
    sets both unless ``schedule`` is given."""
    from localai_sd.pipeline.sampler_names import resolve_sampler, resolve_schedule

    choice = resolve_sampler(DEFAULT_SAMPLER if sampler is None else sampler)  # type: ignore[arg-type]
    if schedule is not None:
        return choice.sampler, resolve_schedule(schedule)  # type: ignore[arg-type]
    return choice.sampler, choice.schedule or DEFAULT_SCHEDULE


def random_seed() -> int:
    """A fresh random seed in [0, 2**32 - 1]."""
    return secrets.randbelow(MAX_SEED + 1)


@dataclass(frozen=True)
class GenerationRequest:
    """A validated txt2img request. Build it with ``GenerationRequest.create``."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    #: Fast convolutions (winograd + sgemm: LocalAI's positive ``mode``), or plain ones (mode 0).
    fast: bool
    seed: int
    #: True when the seed was drawn at random (so the caller can report it).
    seed_was_random: bool
    sampler: str
    schedule: str
    cfg_scale: float
    n: int
    #: Latent cells per side of a decoder tile, set by memory admission when the whole-image decode would
    #: not fit the memory budget (``localai_sd/pipeline/memory.py``); None decodes the whole latent at once.
    decode_tile: int | None = None
    #: Fewer UNet evaluations (opt-in; ``localai_sd/pipeline/denoiser.py`` GuidanceLimits and
    #: ``deepcache.py``): guidance only for lo < sigma <= hi, A1111's s_min_uncond, DeepCache's interval.
    guidance_interval: tuple[float, float] | None = None
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    deepcache_interval: int = 1
    #: True when ``mode`` was ``auto``: ``fast`` is then the memory admission's choice (plain before it).
    mode_auto: bool = False

    @property
    def mode(self) -> int:
        """The ncnn-facing mode: 1 for fast convolutions, 0 for plain ones."""
        return 1 if self.fast else 0

    @property
    def mode_label(self) -> str:
        """The mode as the PNG parameters and the CLI show it: ``1``, ``0``, ``1 (auto)``, ``0 (auto)``."""
        return f"{self.mode} (auto)" if self.mode_auto else str(self.mode)

    @property
    def seeds(self) -> list[int]:
        """The seed of each of the n images: seed, seed+1, ... (wrapping at 2**32)."""
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.n)]

    @property
    def size(self) -> str:
        """The size as ``WxH``."""
        return f"{self.width}x{self.height}"

    @classmethod
    def create(
        cls,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        size: str | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        mode: int | str | None = None,
        seed: int | None = None,
        sampler: str | None = None,
        schedule: str | None = None,
        cfg_scale: float | None = None,
        n: int | None = None,
        guidance_interval: tuple[float, float] | list[float] | None = None,
        s_min_uncond: float | None = None,
        s_min_uncond_all: bool | None = None,
        deepcache_interval: int | None = None,
        limits: Limits | None = None,
    ) -> GenerationRequest:
        """Validate raw values into a request; ``|`` in the prompt splits off the negative prompt.

        Every check runs here, before any work: the text (UTF-8 encodable, prompt and negative prompt within
        ``limits.max_prompt_chars`` together), each field's rule, then ``check_limits``. LocalAI's ``mode``
        rule (``parse_mode``), seed -1 (random) and A1111/sd.cpp sampler names are resolved here too; a
        ``mode`` of ``auto`` (the default) is plain until memory admission (``localai_sd/intake.py``) picks.
        """
        limits = Limits() if limits is None else limits
        check_text(prompt, "prompt")
        if negative_prompt is not None:
            check_text(negative_prompt, "negative_prompt")
        positive, negative = split_negative(prompt)
        if negative_prompt:
            negative = f"{negative}, {negative_prompt}" if negative else negative_prompt
        check_prompt_length(positive, negative, limits.max_prompt_chars, negative_field=bool(negative_prompt))
        max_side = limits.max_side
        if size is not None:
            width, height = parse_size(size, max_side=max_side)
        else:
            default_width, default_height = parse_size(DEFAULT_SIZE)
            width, height = width or default_width, height or default_height
            parse_size(f"{width}x{height}", max_side=max_side)
        steps = DEFAULT_STEPS if steps is None else steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise InvalidRequest(f"step {steps!r} must be an integer of at least 1", param="step")
        fast = parse_mode(DEFAULT_MODE if mode is None else mode)
        chosen_seed = parse_seed(seed)
        seed_was_random = chosen_seed is None
        seed = random_seed() if chosen_seed is None else chosen_seed
        sampler, schedule = parse_sampler(sampler, schedule)
        cfg_scale = DEFAULT_CFG_SCALE if cfg_scale is None else cfg_scale
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, int | float) or not 0 <= cfg_scale <= 30:
            raise InvalidRequest(f"cfg_scale {cfg_scale!r} must be a number from 0 to 30", param="cfg_scale")
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
            raise InvalidRequest(f"n {n!r} must be an integer from 1 to {MAX_N}", param="n")
        request = cls(
            prompt=positive,
            negative_prompt=negative,
            width=width,
            height=height,
            steps=steps,
            fast=bool(fast),
            mode_auto=fast is None,
            seed=seed,
            seed_was_random=seed_was_random,
            sampler=sampler,
            schedule=schedule,
            cfg_scale=float(cfg_scale),
            n=n,
            guidance_interval=check_guidance_interval(guidance_interval),
            s_min_uncond=check_s_min_uncond(s_min_uncond),
            s_min_uncond_all=bool(s_min_uncond_all),
            deepcache_interval=check_deepcache_interval(deepcache_interval),
        )
        check_limits(request, limits)
        return request
