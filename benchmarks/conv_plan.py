"""Winograd by map size, and the text encoder released after encoding: peak memory and time of the default request.

Each variant runs in a fresh process, variants interleaved round by round. A process loads the nets as
``serve`` does (``StableDiffusion.warm``), runs the default request twice (15 steps, mode 1) and reports both
request times, the phase times of the second, and its peak RSS. Real .param files, synthetic weights of the
real size. Writes benchmarks/results/conv-plan-<size>.json with the CPU's flags, ncnn's version and the threads.

python benchmarks/conv_plan.py --size 256 --rounds 3
python benchmarks/conv_plan.py --size 256 --rounds 2 --low-memory
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localai_sd import benchmark
from localai_sd.pipeline.netspec import default_threads

DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "sd-ncnn" / "assets"
RESULTS = Path(__file__).resolve().parent / "results"
KIB, GB = 1024, 1e9

#: name -> NetSet attributes: (keep_text_encoder, unet_plain_max_extent, decoder_plain_max_extent).
VARIANTS: dict[str, tuple[bool, int, int]] = {
    "before (winograd everywhere, text encoder kept)": (True, 0, 0),
    "UNet maps <= 8 plain": (True, 8, 0),
    "default now (UNet <= 8, decoder <= 32, text encoder released)": (False, 8, 32),
}
#: The low-memory setting (``--low-memory``): what giving up the UNet's 16x16-map kernels costs.
LOW_MEMORY_VARIANTS: dict[str, tuple[bool, int, int]] = {
    "low-memory, UNet maps <= 8 plain": (False, 8, 0),
    "low-memory now, UNet maps <= 16 plain": (False, 16, 0),
}


def worker(assets: str, size: int, steps: int, variant: str, low_memory: bool) -> dict[str, Any]:
    """Warm the nets, run the default request twice; times, phases and peak RSS of this process."""
    import time

    from localai_sd.pipeline.pipeline import StableDiffusion
    from localai_sd.pipeline.request import GenerationRequest
    from localai_sd.testing.synthetic import SyntheticWeights

    keep, unet_extent, decoder_extent = (LOW_MEMORY_VARIANTS if low_memory else VARIANTS)[variant]
    sd = StableDiffusion.from_dir(Path(assets), synthetic=SyntheticWeights(), low_memory=low_memory)
    sd.nets.keep_text_encoder = keep
    sd.nets.unet_plain_max_extent = unet_extent
    sd.nets.decoder_plain_max_extent = decoder_extent
    sd.warm(size, size, 1)
    request = GenerationRequest.create(benchmark.PROMPT, size=f"{size}x{size}", steps=steps, mode=1, seed=1)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        sd.generate(request)
        seconds.append(time.perf_counter() - start)
    t = sd.timings
    return {
        "variant": variant,
        "request_s": seconds,
        "encode_s": t.encode,
        "sample_s": t.sample,
        "decode_s": t.decode,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB / GB,
    }


def main(argv: list[str]) -> int:
    """Interleave the variants over ``--rounds`` and write the results file."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--low-memory", action="store_true", help="compare the low-memory setting's plans")
    args = parser.parse_args(argv)
    variants = LOW_MEMORY_VARIANTS if args.low_memory else VARIANTS
    spawn = multiprocessing.get_context("spawn")
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for variant in variants:
            with spawn.Pool(1) as pool:
                job = (str(args.assets.resolve()), args.size, args.steps, variant, args.low_memory)
                result = pool.apply(worker, job)
            result["round"] = round_
            runs.append(result)
            print(json.dumps(result), flush=True)
    summary = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {
            "second_request_median_s": statistics.median(r["request_s"][1] for r in mine),
            "second_request_min_s": min(r["request_s"][1] for r in mine),
            "peak_rss_max_gb": max(r["peak_rss_gb"] for r in mine),
        }
    out = {
        "machine": benchmark.machine_info(),
        "threads": default_threads(),
        "size": args.size,
        "steps": args.steps,
        "summary": summary,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"conv-plan-{args.size}{'-low-memory' if args.low_memory else ''}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
