"""Peak resident memory of a request, estimated from measured figures, and admission against a budget.

Each SD 1.x net costs its resident weights while loaded plus activations while it runs; activations grow
with the image's pixels (linearly for convolutions, quadratically for self-attention over the latent). The
figures below were measured one net at a time in fresh processes (``benchmarks/memory_sizes.py``: real
EdVince .param files, synthetic weights of the real size, 2 threads, one evaluation), results in
``benchmarks/results/memory-sizes.json``; whole-request peaks (``benchmarks/results/memory-pipeline.md`` on the
same machine, ``benchmarks/RESULTS.md`` on another) check the sum.

A request's peak is the largest of its phases, in the order the pipeline runs them:

* default setting: the UNet and the decoder stay loaded, the text encoder is loaded for the encoding and
  released after it; sampling adds the UNet's activations (two sets when cond and uncond run side by side),
  decoding adds the decoder's (the UNet's pools are released first);
* low-memory setting: the text encoder is released before the UNet loads; the plain-convolution decoder is
  loaded for the decode only.

When the whole-image decode does not fit the budget, the decoder runs in tiles (``tiling.py``) of the largest
size that fits; a request that does not fit even then is refused with a message naming what to try.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from localai_sd.errors import InvalidRequest
from localai_sd.pipeline import conv_plan
from localai_sd.pipeline.request import GenerationRequest
from localai_sd.pipeline.tiling import DEFAULT_OVERLAP, VAE_SCALE

GB = 10**9
#: Default budget: this share of the machine's (or the container's) RAM.
DEFAULT_BUDGET_FRACTION = 0.85
#: Decoder tile sides tried, in latent cells, largest first (512, 384 and 256 pixels).
DECODE_TILES = (64, 48, 32)


@dataclass(frozen=True)
class NetMemory:
    """Measured memory of one net: resident weights, and activations ``base + a * pixels + b * pixels**2``."""

    weights: float
    base: float = 0.0
    per_pixel: float = 0.0
    per_pixel_squared: float = 0.0

    def activations(self, pixels: int) -> float:
        """Bytes of blobs and workspace while one evaluation runs on an image of ``pixels`` pixels."""
        return self.base + self.per_pixel * pixels + self.per_pixel_squared * pixels * pixels


#: The figures were measured on one CPU (AVX-512); ncnn picks other kernels on others, so the peak is raised
#: by this factor: an AVX2 Zen 3 machine peaked at 13.30 GB for 512x512 mode 1 (benchmarks/RESULTS.md) where
#: the model's sum, matching this machine (11.64 GB measured, benchmarks/results/memory-pipeline.md), is 11.7.
MARGIN = 1.15
#: Python, numpy, ncnn and the server's modules (``benchmarks/memory.py``: 0.05 GB for the CLI's imports;
#: FastAPI and uvicorn add about as much again).
PROCESS = 0.15 * GB
#: FrozenCLIPEmbedder: 0.395 GB loaded at every size; one 77-token chunk adds no measurable peak.
TEXT_ENCODER = NetMemory(weights=0.40 * GB, base=0.05 * GB)
#: AutoencoderKL decoder, winograd+sgemm (our default): 0.80 GB of weights at every size. Activations
#: 0.858 / 1.700 / 2.976 / 4.646 / 6.237 GB at 256 / 384 / 512 / 640 / 768 px square: least squares gives
#: 0.214 GB + 10.41 KB per pixel; the slope is raised to 10.9 KB (and the base to 0.2 GB) to lie above every
#: point (640 is the tightest). At 1024x1024 that is 11.6 GB: the decoder alone explains most of the
#: "1024x1024 went past 12 GB" report, and is what tiling removes.
DECODER = NetMemory(weights=0.81 * GB, base=0.2 * GB, per_pixel=10_900)
#: Its weights while ``conv_plan`` runs its latent-sized maps without winograd (sides up to 32 cells, 256
#: pixels): 0.584 GB measured at 256.
DECODER_WEIGHTS_SMALL = 0.59 * GB
DECODER_SMALL_MAX_SIDE = conv_plan.DECODER_PLAIN_MAX_EXTENT * VAE_SCALE
#: The plain-convolution bf16 decoder of the low-memory setting (the reference's options): 0.15 GB of
#: weights; activations 0.162 / 0.403 / 0.737 / 1.260 / 1.600 GB at 256 ... 768 px, 2.47-3.08 KB per pixel.
DECODER_REFERENCE = NetMemory(weights=0.16 * GB, per_pixel=3_100)
#: UNet activations of one evaluation (one lane), the same in both modes (512: 1.384 GB in mode 0, 1.386 GB in
#: mode 1; 384: 0.496 / 0.474). Measured 0.079 / 0.496 / 1.384 / 1.832 / 3.734 GB at 256 / 384 / 512 / 640 /
#: 768 px; at 1024 px a run was stopped at 20.0 GB resident and still growing (activations > 16.85 GB).
#: Self-attention over the latent's h*w tokens makes them grow with the square of the pixels: the curve
#: through 512 px and the 1024 px lower bound (1683 B per pixel + 0.01372 B per pixel squared) lies above
#: every measured point (+55 % at 768).
UNET_ACTIVATIONS = NetMemory(weights=0.0, per_pixel=1683, per_pixel_squared=0.01372)
#: UNet weights in mode 0 (plain convolution): 3.15 GB at every size.
UNET_WEIGHTS_MODE_0 = 3.16 * GB
#: In mode 1 ncnn stores winograd-transformed kernels, chosen from the input shapes the .param declares
#: (every param carries shape hints: EdVince's -opt ones, or ours written by ``param_hints``), except on the
#: small maps where ``conv_plan`` switches winograd off (maps up to 8 cells, up to 16 in the low-memory
#: setting). Measured by the largest side (benchmarks/results/memory-sizes-conv-plan.json; 768 from
#: memory-sizes-hinted.json, where nothing is plain): (largest side up to, GB).
UNET_WEIGHTS_MODE_1 = ((256, 4.16), (384, 4.70), (512, 6.47), (1024, 7.27))
UNET_WEIGHTS_MODE_1_LOW_MEMORY = ((256, 3.35), (512, 4.16), (640, 6.40), (1024, 7.27))


def unet_weights_for(mode: int, width: int, height: int, low_memory: bool = False) -> float:
    """Resident UNet weights for this mode, size and setting."""
    if mode == 0:
        return UNET_WEIGHTS_MODE_0
    table = UNET_WEIGHTS_MODE_1_LOW_MEMORY if low_memory else UNET_WEIGHTS_MODE_1
    side = max(width, height)
    return next((gb for limit, gb in table if side <= limit), table[-1][1]) * GB


def decoder_weights_for(width: int, height: int) -> float:
    """Resident weights of our decoder: its latent-sized maps run without winograd up to 256 pixels a side."""
    return DECODER_WEIGHTS_SMALL if max(width, height) <= DECODER_SMALL_MAX_SIDE else DECODER.weights


@dataclass(frozen=True)
class Setup:
    """How the pipeline runs a request, beyond the request itself: what the estimate depends on."""

    #: The low-memory setting (nets loaded per phase, plain-convolution decoder).
    low_memory: bool = False
    #: UNet activation sets alive at once: 2 when cond and uncond run side by side.
    lanes: int = 2


@dataclass(frozen=True)
class MemoryEstimate:
    """A request's estimated peak and the phase it comes from, with the decoder tile it assumes."""

    peak: int
    phase: str
    #: Latent cells per decoder tile side; None decodes the whole latent at once.
    decode_tile: int | None


def setup_for(request: GenerationRequest, *, low_memory: bool, threads: int | None, backend: str) -> Setup:
    """The Setup a StableDiffusion with these settings uses for ``request`` (see ``StableDiffusion.unet``)."""
    cores = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    guidance_limited = request.guidance_interval is not None or request.s_min_uncond > 0
    side_by_side = not low_memory and request.cfg_scale != 1.0 and not guidance_limited and (cores or 1) >= 2
    return Setup(low_memory=low_memory, lanes=2 if side_by_side else 1)


def decoder_pixels(width: int, height: int, tile: int | None) -> int:
    """Pixels the decoder runs on at once: the image, or one tile (clamped to the image)."""
    if tile is None:
        return width * height
    side = tile * VAE_SCALE
    return min(width, side) * min(height, side)


def estimate(
    width: int, height: int, mode: int, setup: Setup, decode_tile: int | None = None
) -> MemoryEstimate:
    """Estimated peak resident bytes of one request, and its phase, for a decode whole or in tiles."""
    pixels = width * height
    unet_weights = unet_weights_for(mode, width, height, setup.low_memory)
    sampling = UNET_ACTIVATIONS.activations(pixels)
    decoder = DECODER_REFERENCE if setup.low_memory else DECODER
    decoding = decoder.activations(decoder_pixels(width, height, decode_tile))
    if decode_tile is not None:
        decoding += 16 * pixels  # float64 blend accumulators: 3 channels and the weight sum
    if setup.low_memory:
        phases = {
            "encode": TEXT_ENCODER.weights + TEXT_ENCODER.activations(pixels),
            "sample": unet_weights + sampling,
            "decode": unet_weights + decoder.weights + decoding,
        }
    else:
        resident = unet_weights + decoder_weights_for(width, height)
        phases = {
            "encode": resident + TEXT_ENCODER.weights + TEXT_ENCODER.activations(pixels),
            "sample": resident + setup.lanes * sampling,
            "decode": resident + decoding,
        }
    phase = max(phases, key=lambda name: phases[name])
    return MemoryEstimate(round(MARGIN * (PROCESS + phases[phase])), phase, decode_tile)


def plan(width: int, height: int, mode: int, setup: Setup, budget: int) -> MemoryEstimate:
    """The estimate with the largest decode that fits ``budget``: whole, else the largest tile that fits.

    When nothing fits, the whole-image estimate is returned (its peak is over the budget).
    """
    whole = estimate(width, height, mode, setup)
    if whole.peak <= budget:
        return whole
    for tile in DECODE_TILES:
        if tile * VAE_SCALE < max(width, height) and tile > DEFAULT_OVERLAP:
            tiled = estimate(width, height, mode, setup, decode_tile=tile)
            if tiled.peak <= budget:
                return tiled
    return whole


def admit(request: GenerationRequest, budget: int, setup: Setup) -> GenerationRequest:
    """The request with its decoder tile set, or InvalidRequest when its estimated peak exceeds ``budget``."""
    fit = plan(request.width, request.height, request.mode, setup, budget)
    if fit.peak > budget:
        raise InvalidRequest(
            f"size {request.size} in mode {request.mode} needs about {fit.peak / GB:.1f} GB at its peak "
            f"({fit.phase}, estimated); the memory limit is {budget / GB:.1f} GB (--max-memory / "
            f"MAX_MEMORY): {suggestion(request, budget, setup)}",
            param="size",
        )
    return replace(request, decode_tile=fit.decode_tile)


def suggestion(request: GenerationRequest, budget: int, setup: Setup) -> str:
    """What would fit instead: mode 0, the low-memory setting, or a smaller size."""
    tries = []
    if request.mode != 0 and plan(request.width, request.height, 0, setup, budget).peak <= budget:
        tries.append("mode 0")
    low = replace(setup, low_memory=True, lanes=1)
    if not setup.low_memory and plan(request.width, request.height, request.mode, low, budget).peak <= budget:
        tries.append("the --low-memory setting (LOW_MEMORY=1)")
    side = largest_square(request.mode, setup, budget)
    tries.append(f"a smaller size (up to {side}x{side} fits)" if side else "a machine with more memory")
    return "try " + ", or ".join(tries)


def largest_square(mode: int, setup: Setup, budget: int) -> int:
    """The largest square side (a multiple of 64, up to 1024) whose request fits ``budget``, or 0."""
    fitting = [side for side in range(64, 1025, 64) if plan(side, side, mode, setup, budget).peak <= budget]
    return max(fitting, default=0)


def meminfo_bytes(text: str, key: str) -> int | None:
    """A ``kB`` field of /proc/meminfo text (``MemTotal``, ``MemAvailable``) in bytes."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key and value.split():
            return int(value.split()[0]) * 1024
    return None


def cgroup_limit(text: str) -> int | None:
    """A cgroup memory limit file's value in bytes, or None for ``max`` or a no-limit sentinel."""
    value = text.strip()
    return int(value) if value.isdigit() and int(value) < 1 << 60 else None


def machine_memory(root: Path = Path("/")) -> int | None:
    """Physical RAM (MemTotal), lowered to the container's cgroup limit; None when unreadable."""
    try:
        total = meminfo_bytes((root / "proc/meminfo").read_text(), "MemTotal")
    except OSError:
        total = None
    for name in ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = cgroup_limit((root / name).read_text())
        except OSError:
            continue
        if limit is not None:
            total = limit if total is None else min(total, limit)
    return total


def default_budget(total: int | None) -> int | None:
    """The default budget: 85 % of the machine's memory, or None (no check) when it is unknown."""
    return None if total is None else int(total * DEFAULT_BUDGET_FRACTION)


def resolve_budget(configured: int | None, root: Path = Path("/")) -> int | None:
    """The configured budget, else the default from this machine's memory (read now, at startup)."""
    return configured if configured is not None else default_budget(machine_memory(root))
