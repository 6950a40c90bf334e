"""Where the memory goes: RSS and peak RSS after each stage of one request, in a fresh process.

python benchmarks/memory.py --size 256 --mode 1 --steps 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "sd-ncnn" / "assets"


def memory_gb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in GB."""
    from localai_sd.benchmark import process_memory

    fields = process_memory()
    return fields["VmRSS"] / 1e9, fields["VmHWM"] / 1e9


def main(argv: list[str]) -> int:
    """Load and run one request stage by stage, printing memory after each."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--mode", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--low-memory", action="store_true", help="the low-memory setting (nets load per phase)"
    )
    args = parser.parse_args(argv)

    from localai_sd.pipeline.pipeline import StableDiffusion
    from localai_sd.pipeline.request import GenerationRequest
    from localai_sd.testing.synthetic import SyntheticWeights

    def stage(name: str, t0: float) -> None:
        rss, hwm = memory_gb()
        print(
            f"{name:28} rss {rss:5.2f} GB  peak {hwm:5.2f} GB  ({time.perf_counter() - t0:.1f} s)", flush=True
        )

    t0 = time.perf_counter()
    stage("python + imports", t0)
    sd = StableDiffusion.from_dir(
        args.assets.resolve(), synthetic=SyntheticWeights(), low_memory=args.low_memory
    )
    stage("text encoder loaded", t0)
    if not args.low_memory:  # the low-memory setting loads each net inside the request
        sd.unet(args.size, args.size, args.mode)
        stage("unet loaded", t0)
        sd.decoder(args.size, args.size)
        stage("decoder loaded", t0)
    request = GenerationRequest.create("a cat | blurry", size=f"{args.size}x{args.size}", steps=args.steps,
                                       mode=args.mode, seed=1)  # fmt: skip
    sd.generate(request)
    stage("request 1 done", t0)
    t = sd.timings
    print(f"  encode {t.encode:.2f} s, s/step {t.sample / args.steps:.2f}, decode {t.decode:.2f} s")
    sd.generate(request)
    stage("request 2 done", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
