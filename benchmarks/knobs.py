"""Per-net knob sweep: time the UNet (or decoder) under ncnn option / OpenMP variants, each in a fresh process.

Variants alternate round-robin (A, B, C, A, B, C, ...) within one run, like bench.py, and each variant's
process reports its own peak RSS. Writes benchmarks/results/knobs-<stem>.json.

    python benchmarks/knobs.py --net unet --size 256 --mode 1 --runs 3 --rounds 2 --variants default,no-fp16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "sd-ncnn" / "assets"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: name -> (NetOptions field overrides, environment overrides for the worker process).
VARIANTS: dict[str, tuple[dict[str, object], dict[str, str]]] = {
    "default": ({}, {}),
    "no-fp16": ({"fp16": False}, {}),
    "bf16": ({"fp16": False, "bf16_storage": True}, {}),
    "no-light": ({"light_mode": False}, {}),
    "winograd-only": ({"winograd": True, "sgemm": False}, {}),
    "sgemm-only": ({"winograd": False, "sgemm": True}, {}),
    "omp-passive": ({}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "omp-active": ({}, {"OMP_WAIT_POLICY": "ACTIVE"}),
    "omp-bind": ({}, {"OMP_PROC_BIND": "true", "OMP_PLACES": "cores"}),
    "threads-1": ({"threads": 1}, {}),
    "no-wino63": ({"winograd63": False}, {}),
    "wino23-only": ({"winograd63": False, "winograd43": False}, {}),
    "bf16-no-wino63": ({"fp16": False, "bf16_storage": True, "winograd63": False}, {}),
    # Plain convolution (no winograd/sgemm workspace), the low-memory decoder: fp16 storage, or the reference's bf16.
    "plain": ({"winograd": False, "sgemm": False}, {}),
    "plain-bf16": ({"winograd": False, "sgemm": False, "fp16": False, "bf16_storage": True}, {}),
    # Our default step: cond and uncond side by side on half the threads each (UNet.pair).
    "side-by-side": ({}, {}),
}


def worker(asset_dir: str, net_name: str, size: int, mode: int, variant: str, runs: int) -> dict:
    """Load one net with the variant's options and time ``runs`` evaluations (a cond+uncond pair for the UNet)."""
    import resource

    from localai_sd.pipeline import nets
    from localai_sd.pipeline.assets import AssetSet
    from localai_sd.pipeline.ncnn_runtime import load_net
    from localai_sd.pipeline.netspec import decoder_options, unet_options
    from localai_sd.testing.synthetic import SyntheticWeights

    overrides, _ = VARIANTS[variant]
    assets = AssetSet.from_dir(asset_dir)
    base = unet_options(mode) if net_name == "unet" else decoder_options()
    options = dataclasses.replace(base, **overrides)
    start = time.perf_counter()
    lanes = 2 if variant == "side-by-side" and net_name == "unet" else 1
    options = dataclasses.replace(options, threads=max(1, options.threads // lanes))
    text = assets.param_text(net_name, size, size)
    net = load_net(text, net_name, SyntheticWeights(), options)
    cls = nets.UNet if net_name == "unet" else nets.VAEDecoder
    model = cls(net, net_name, options)
    model.width = model.height = size
    if isinstance(model, nets.UNet):
        model.lanes = lanes
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    latent = rng.standard_normal(model.latent_shape, dtype=np.float32)
    cond = rng.standard_normal((77, 768), dtype=np.float32) * 0.1
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        if net_name == "unet":
            model.pair(latent, 500.0, cond, cond * 0.5, 0.1, -7.0)  # in turn unless side-by-side
        else:
            model(latent)
        times.append(time.perf_counter() - t0)
    model.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    return {"variant": variant, "load_s": load_s, "times": times, "peak_rss_gb": rss}


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    """Run the worker in a fresh spawned process with the variant's environment."""
    _, env = VARIANTS[variant]
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            return pool.submit(
                worker, str(args.assets.resolve()), args.net, args.size, args.mode, variant, args.runs
            ).result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str]) -> int:
    """Sweep the variants round-robin and print min/median per variant."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS)
    parser.add_argument("--net", choices=("unet", "vae_decoder"), default="unet")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--mode", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="default,no-fp16")
    parser.add_argument("--stem", default=time.strftime("%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    found: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            r = run_variant(args, v)
            found[v].append(r)
            print(f"{v:14} load {r['load_s']:.1f} s  runs {[round(t, 2) for t in r['times']]}  "
                  f"peak {r['peak_rss_gb']:.2f} GB", flush=True)  # fmt: skip
    print(f"\n| variant | min s | median s | peak RSS GB |  ({args.net} {args.size} mode {args.mode})")
    print("|---|---|---|---|")
    for v, rs in found.items():
        times = [t for r in rs for t in r["times"]]
        rss = min(r["peak_rss_gb"] for r in rs)
        print(f"| {v} | {min(times):.2f} | {statistics.median(times):.2f} | {rss:.2f} |")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"knobs-{args.stem}.json"
    out.write_text(
        json.dumps(
            {"args": {**vars(args), "assets": "/".join(args.assets.parts[-2:])}, "results": found}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
