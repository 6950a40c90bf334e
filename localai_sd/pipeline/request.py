"""One validated generation request: what the CLI and the HTTP body both become."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from localai_sd.errors import InvalidRequest

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

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


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
    mode: int
    seed: int
    #: True when the seed was drawn at random (so the caller can report it).
    seed_was_random: bool
    sampler: str
    schedule: str
    cfg_scale: float
    n: int

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
        mode: int | None = None,
        seed: int | None = None,
        sampler: str | None = None,
        schedule: str | None = None,
        cfg_scale: float | None = None,
        n: int | None = None,
        max_side: int = MAX_SIDE,
    ) -> GenerationRequest:
        """Validate raw values into a request; ``|`` in the prompt splits off the negative prompt."""
        from localai_sd.pipeline.samplers import SAMPLERS, SCHEDULES

        if not isinstance(prompt, str):
            raise InvalidRequest(f"prompt must be a string, got {type(prompt).__name__}", param="prompt")
        positive, negative = split_negative(prompt)
        if negative_prompt:
            negative = f"{negative}, {negative_prompt}" if negative else negative_prompt
        if size is not None:
            width, height = parse_size(size, max_side=max_side)
        else:
            width, height = width or 512, height or 512
            parse_size(f"{width}x{height}", max_side=max_side)
        steps = DEFAULT_STEPS if steps is None else steps
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise InvalidRequest(f"step {steps!r} must be an integer of at least 1", param="step")
        mode = 0 if mode is None else mode
        if mode not in (0, 1) or isinstance(mode, bool):
            raise InvalidRequest(
                f"mode {mode!r} must be 0 (low memory) or 1 (winograd/sgemm, faster)", param="mode"
            )
        seed_was_random = seed is None
        if seed is None:
            seed = random_seed()
        elif not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise InvalidRequest(f"seed {seed!r} must be an integer from 0 to {MAX_SEED}", param="seed")
        sampler = DEFAULT_SAMPLER if sampler is None else sampler
        if sampler not in SAMPLERS:
            raise InvalidRequest(
                f"sampler {sampler!r} is unknown; choose one of {', '.join(sorted(SAMPLERS))}",
                param="sampler",
            )
        schedule = DEFAULT_SCHEDULE if schedule is None else schedule
        if schedule not in SCHEDULES:
            raise InvalidRequest(
                f"schedule {schedule!r} is unknown; choose one of {', '.join(sorted(SCHEDULES))}",
                param="schedule",
            )
        cfg_scale = DEFAULT_CFG_SCALE if cfg_scale is None else cfg_scale
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, int | float) or not 0 <= cfg_scale <= 30:
            raise InvalidRequest(f"cfg_scale {cfg_scale!r} must be a number from 0 to 30", param="cfg_scale")
        n = 1 if n is None else n
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
            raise InvalidRequest(f"n {n!r} must be an integer from 1 to {MAX_N}", param="n")
        return cls(
            prompt=positive,
            negative_prompt=negative,
            width=width,
            height=height,
            steps=steps,
            mode=mode,
            seed=seed,
            seed_was_random=seed_was_random,
            sampler=sampler,
            schedule=schedule,
            cfg_scale=float(cfg_scale),
            n=n,
        )
