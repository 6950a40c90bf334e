"""What the SD1 nets are, apart from ncnn itself: I/O constants, the ncnn options we set, weight sources.

Pure data, so that the pieces that decide *how* to run a net (modes, threads, memory) need not import ncnn;
``ncnn_runtime.py`` applies these options to ncnn and is the only ncnn importer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from localai_sd.errors import InvalidRequest

#: CLIP context length (tokens per chunk, incl. start/end), and its hidden size (openai/clip-vit-large-patch14).
CONTEXT_LENGTH = 77
EMBED_DIM = 768
#: SD1 latent channels and the VAE scale factor (CompVis configs/stable-diffusion/v1-inference.yaml).
LATENT_CHANNELS = 4
VAE_SCALING = 0.18215
#: Pixels per latent cell.
VAE_SCALE = 8
#: ncnn ModelBin type flags (ncnn src/modelbin.cpp): 0 = raw fp32 follows; this one = fp16 follows.
FLAG_FP32 = 0
FLAG_FP16 = 0x01306B47
FLAG_SIZE = 4
#: What ncnn's forward returns when an allocation fails (ncnn src/net.cpp: "return -100").
NCNN_OUT_OF_MEMORY = -100


def default_threads() -> int:
    """Number of CPU cores available to this process."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class NetOptions:
    """The ncnn Option fields we set (the reference sets fp16 packed/storage/arithmetic and packing on)."""

    threads: int
    winograd: bool = True
    sgemm: bool = True
    fp16: bool = True
    bf16_storage: bool = False
    light_mode: bool = True
    #: Which winograd tile sizes ncnn may pick when ``winograd`` is on: F(6,3), F(4,3), F(2,3).
    #: Larger tiles save multiplies but store bigger transformed kernels (8x8 / 6x6 / 4x4 per 3x3).
    winograd63: bool = True
    winograd43: bool = True
    winograd23: bool = True


def unet_options(mode: int, threads: int | None = None) -> NetOptions:
    """LocalAI/EdVince UNet options: mode 0 = winograd and sgemm conv off, any other mode = on."""
    if not isinstance(mode, int) or mode < 0:
        raise InvalidRequest(f"mode {mode!r} is not supported: use 0 (plain conv) or 1 (winograd+sgemm)")
    fast = mode != 0
    return NetOptions(threads=threads or default_threads(), winograd=fast, sgemm=fast)


def decoder_options(threads: int | None = None, *, reference: bool = False) -> NetOptions:
    """VAE options: winograd+sgemm on (measured ~5x faster, same output), or the reference's (off, bf16)."""
    if reference:
        return NetOptions(
            threads=threads or default_threads(), winograd=False, sgemm=False, bf16_storage=True
        )
    return NetOptions(threads=threads or default_threads())


class WeightReader(Protocol):
    """A source of weights other than a .bin file: fills each buffer ncnn asks for, in load order."""

    def read_into(self, buffer: memoryview) -> None: ...


#: Where a net's weights come from: a .bin file, or a reader (synthetic weights in tests and benchmarks).
Weights = Path | WeightReader
