"""Resident memory of each net by image size and mode: the measurements behind localai_sd/pipeline/memory.py.

Each point runs in a freshly spawned process: load one net (real .param, synthetic weights of the real size),
run it once, and record VmRSS before and after loading and the peak (VmHWM) after the run. So

    weights     = rss_loaded - rss_start     (what stays resident while the net is loaded)
    activations = hwm_run    - rss_loaded    (blobs and workspace of one evaluation, one lane)

python benchmarks/memory_sizes.py --nets unet,decoder --sizes 256,384,512 --modes 0,1 --out memory-sizes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "sd-ncnn" / "assets"
RESULTS = Path(__file__).resolve().parent / "results"
GB = 1e9


def memory_bytes() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes."""
    from localai_sd.benchmark import process_memory

    return process_memory()


def measure_one(assets: Path, net: str, size: int, mode: int, threads: int | None) -> dict:
    """Load one net at size x size, run it once, return its memory figures (runs in the child)."""
    import numpy as np

    from localai_sd.pipeline.assets import AssetSet
    from localai_sd.pipeline.netset import load_decoder, load_text_encoder, load_unet
    from localai_sd.testing.synthetic import SyntheticWeights

    asset_set = AssetSet.from_dir(assets.resolve())
    synthetic = SyntheticWeights()
    start = memory_bytes()["VmRSS"]
    t0 = time.perf_counter()
    latent = np.random.default_rng(0).standard_normal((4, size // 8, size // 8)).astype(np.float32)
    if net in ("unet", "unet-low-memory"):  # the low-memory setting's UNet: winograd off on maps up to 16
        extent = {"unet-low-memory": {"plain_max_extent": 16}}.get(net, {})
        model = load_unet(asset_set, size, size, mode=mode, threads=threads, weights=synthetic, **extent)
        loaded, loaded_peak = memory_bytes()["VmRSS"], memory_bytes()["VmHWM"]
        cond = np.zeros((77, 768), dtype=np.float32)
        t1 = time.perf_counter()
        model(latent, 500.0, cond, 0.1, -1.0)
    elif net in ("decoder", "decoder-reference"):
        model = load_decoder(
            asset_set,
            size,
            size,
            threads=threads,
            weights=synthetic,
            reference_options=net == "decoder-reference",
        )
        loaded, loaded_peak = memory_bytes()["VmRSS"], memory_bytes()["VmHWM"]
        t1 = time.perf_counter()
        model(latent)
    elif net == "text_encoder":
        model = load_text_encoder(asset_set, threads=threads, weights=synthetic)
        loaded, loaded_peak = memory_bytes()["VmRSS"], memory_bytes()["VmHWM"]
        t1 = time.perf_counter()
        model(np.zeros(77, dtype=np.int32), np.ones(77, dtype=np.float32))
    else:
        raise SystemExit(f"unknown net {net!r}")
    run_seconds = time.perf_counter() - t1
    peak = memory_bytes()["VmHWM"]
    return {
        "net": net,
        "size": size,
        "mode": mode,
        "threads": model.options.threads,
        "rss_start": start,
        "rss_loaded": loaded,
        "hwm_run": peak,
        "hwm_loaded": loaded_peak,
        "weights_gb": round((loaded - start) / GB, 3),
        "activations_gb": round((peak - loaded) / GB, 3),
        "load_s": round(t1 - t0, 2),
        "run_s": round(run_seconds, 2),
    }


def main(argv: list[str]) -> int:
    """Measure every (net, size, mode) point in its own process and write benchmarks/results/<out>.json."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS)
    parser.add_argument("--nets", default="unet,decoder")
    parser.add_argument("--sizes", default="256,384,512")
    parser.add_argument("--modes", default="0,1", help="UNet modes (the decoder has none)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="memory-sizes")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [int(m) for m in args.modes.split(",")]
    if args.one:
        print(json.dumps(measure_one(args.assets, args.nets, sizes[0], modes[0], args.threads)))
        return 0

    from localai_sd.benchmark import machine_info

    points = []
    for net in args.nets.split(","):
        for size in sizes:
            for mode in modes if net.startswith("unet") else [0]:
                command = [sys.executable, __file__, "--one", "--assets", str(args.assets), "--nets", net,
                           "--sizes", str(size), "--modes", str(mode)]  # fmt: skip
                if args.threads:
                    command += ["--threads", str(args.threads)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(f"{net} {size} mode {mode}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                point = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{net:18} {size:5} mode {mode}: weights {point['weights_gb']:.3f} GB, activations "
                    f"{point['activations_gb']:.3f} GB, peak {point['hwm_run'] / GB:.3f} GB, "
                    f"run {point['run_s']} s",
                    flush=True,
                )
                points.append(point)
    out = RESULTS / f"{args.out}.json"
    document = {"machine": machine_info(), "points": points}
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
