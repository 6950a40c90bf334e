"""Benchmark the real SD1 nets with synthetic weights: load time, run time, peak RSS, decoder options.

Usage: python benchmarks/bench_nets.py --assets <synthetic asset dir> [--size 256] [--threads 2] [--repeat 3]
       [--out results.json]. Build the asset dir with localai_sd.testing.synthetic.build_synthetic_assets.
Each contender runs in its own subprocess (so peak RSS is its own); contenders are interleaved per round.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from localai_sd.pipeline.assets import AssetSet
from localai_sd.pipeline.netset import load_decoder, load_unet

CONTENDERS = ("unet-mode0", "unet-mode1", "decoder-reference", "decoder-winograd")


def run_child(kind: str, assets_dir: Path, size: int, threads: int, repeat: int, dump: Path | None) -> dict:
    """Load one net, run it ``repeat`` times, return timings and this process's peak RSS."""
    assets = AssetSet.from_dir(assets_dir)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((4, size // 8, size // 8)).astype(np.float32)
    start = time.perf_counter()
    if kind.startswith("unet"):
        model = load_unet(assets, size, size, mode=int(kind[-1]), threads=threads)
        cond = rng.standard_normal((77, 768)).astype(np.float32)

        def call() -> np.ndarray:
            return model(latent, 500.0, cond, 0.5, -1.0)
    else:
        model = load_decoder(
            assets, size, size, threads=threads, reference_options=kind == "decoder-reference"
        )

        def call() -> np.ndarray:
            return model(latent)

    load_seconds = time.perf_counter() - start
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = call()
        runs.append(time.perf_counter() - start)
    if dump is not None:
        np.save(dump, out)
    return {
        "kind": kind,
        "load_s": round(load_seconds, 3),
        "run_s": [round(r, 3) for r in runs],
        "min_run_s": round(min(runs), 3),
        "ncnn_s": round(model.ncnn_seconds, 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "finite": bool(np.isfinite(out).all()),
    }


def main() -> None:
    """Run every contender in a subprocess, interleaved for ``--rounds`` rounds, and write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--assets", type=Path, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=list(CONTENDERS))
    parser.add_argument("--out", type=Path, default=Path("bench_nets.json"))
    parser.add_argument("--child", default=None)
    parser.add_argument("--dump", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        result = run_child(args.child, args.assets, args.size, args.threads, args.repeat, args.dump)
        print(json.dumps(result))
        return
    results = []
    for _ in range(args.rounds):
        for kind in args.only:
            dump = args.out.with_name(f"{args.out.stem}-{kind}.npy")
            cmd = [sys.executable, __file__, "--assets", str(args.assets), "--size", str(args.size),
                   "--threads", str(args.threads), "--repeat", str(args.repeat), "--child", kind,
                   "--dump", str(dump)]  # fmt: skip
            line = (
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            results.append(json.loads(line))
            print(line, flush=True)
    outputs = {k: np.load(args.out.with_name(f"{args.out.stem}-{k}.npy")) for k in args.only}
    if {"decoder-reference", "decoder-winograd"} <= outputs.keys():
        diff = np.abs(outputs["decoder-reference"] - outputs["decoder-winograd"]).max()
        results.append({"decoder_max_abs_diff": float(diff)})
    if {"unet-mode0", "unet-mode1"} <= outputs.keys():
        results.append(
            {"unet_mode_max_abs_diff": float(np.abs(outputs["unet-mode0"] - outputs["unet-mode1"]).max())}
        )
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results[-2:]))


if __name__ == "__main__":
    main()
