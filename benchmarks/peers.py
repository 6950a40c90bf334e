"""The same SD 1.x UNet through ncnn (ours) and through peer engines: PyTorch fp32/bf16 and onnxruntime.

Optional: the peers need packages kept out of the default install and out of CI
(``pip install torch==2.13.0 diffusers onnxruntime onnx onnxscript``). Engines that are not installed are
skipped with a message. Every engine runs in a fresh spawned process (so its peak RSS is its own) and the
engines alternate round-robin (A, B, C, A, B, C, ...) because this machine throttles in bursts.

The peers build a diffusers ``UNet2DConditionModel`` with the SD 1.x configuration and random weights (same
shapes as the ncnn UNet: 4x(H/8)x(W/8) latent, 77x768 context, 859.5 M parameters). One sampling step is the
cond and the uncond evaluation: ``ncnn`` times our pipeline's step (``UNet.pair``, mode 1, the two side by
side), the ``-b2`` engines one batch of 2 (the way diffusers samples), the others two batch-1 calls.

    python benchmarks/peers.py --size 256 --runs 3 --rounds 2
    python benchmarks/peers.py --engines ncnn,torch-bf16 --size 512
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "sd-ncnn" / "assets"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
ENGINES = ("ncnn", "torch-fp32", "torch-fp32-b2", "torch-bf16", "torch-bf16-b2", "onnxruntime")

#: The SD 1.x UNet (CompVis v1 configuration) in diffusers' terms.
SD1_UNET_CONFIG = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}


def peak_rss_gb() -> float:
    """This process's peak resident set size in GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def available(engine: str) -> str | None:
    """None if the engine's packages import, else the reason it is skipped."""
    needed = {"ncnn": ["ncnn"], "onnxruntime": ["onnxruntime", "onnx", "torch", "diffusers"]}
    for module in needed.get(engine, ["torch", "diffusers"]):
        try:
            __import__(module)
        except ImportError:
            return f"{engine}: skipped, {module!r} is not installed"
    return None


def ncnn_runner(asset_dir: str, size: int, threads: int) -> Callable[[], object]:
    """Our UNet step (mode 1, synthetic weights of the real layout): cond and uncond as the pipeline runs them."""
    from localai_sd.pipeline.assets import AssetSet
    from localai_sd.pipeline.netset import load_unet
    from localai_sd.testing.synthetic import SyntheticWeights

    assets = AssetSet.from_dir(asset_dir)
    weights = SyntheticWeights()
    unet = load_unet(assets, size, size, mode=1, threads=threads, weights=weights, concurrent_pairs=True)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((4, size // 8, size // 8), dtype=np.float32)
    cond = rng.standard_normal((77, 768), dtype=np.float32) * 0.1
    return lambda: unet.pair(latent, 500.0, cond, cond * 0.5, 0.1, -7.0)


def torch_unet(dtype_name: str, threads: int) -> tuple[object, object]:
    """A randomly initialised SD 1.x diffusers UNet in ``dtype_name``, built directly in that dtype."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16 directly: no fp32 copy inflates the peak
    try:
        model = UNet2DConditionModel(**SD1_UNET_CONFIG).eval()
    finally:
        torch.set_default_dtype(previous)
    return torch, model


def torch_runner(dtype_name: str, size: int, threads: int, batch: int) -> Callable[[], object]:
    """PyTorch eager UNet: fp32, or bf16 in channels_last; ``batch`` latents per call."""
    torch, model = torch_unet(dtype_name, threads)
    dtype = getattr(torch, dtype_name)
    fmt = torch.channels_last if dtype_name == "bfloat16" else torch.contiguous_format
    model = model.to(memory_format=fmt)  # type: ignore[attr-defined]
    sample = torch.randn(batch, 4, size // 8, size // 8, dtype=dtype).to(memory_format=fmt)
    context = torch.randn(batch, 77, 768, dtype=dtype) * 0.1
    timestep = torch.tensor([500] * batch)

    def run() -> object:
        with torch.inference_mode():
            return model(sample, timestep, encoder_hidden_states=context).sample  # type: ignore[operator]

    return run


def onnx_path(size: int, cache: Path, threads: int) -> Path:
    """Export the fp32 UNet to ONNX once per size (weights as external data: the model is over 2 GB)."""
    folder = cache / f"sd1-unet-{size}"
    if (folder / "unet.onnx").exists():
        return folder / "unet.onnx"
    torch, model = torch_unet("float32", threads)

    class Wrapped(torch.nn.Module):  # type: ignore[name-defined,misc]
        """Positional inputs and a plain tensor output, as the exporter wants."""

        def __init__(self) -> None:
            super().__init__()
            self.unet = model

        def forward(self, sample: object, timestep: object, context: object) -> object:
            return self.unet(sample, timestep, encoder_hidden_states=context).sample

    inputs = (torch.randn(1, 4, size // 8, size // 8), torch.tensor([500]), torch.randn(1, 77, 768))
    partial = cache / f"sd1-unet-{size}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        program = torch.onnx.export(Wrapped().eval(), inputs, dynamo=True)
    program.save(str(partial / "unet.onnx"), external_data=True)
    partial.rename(folder)  # the model names its data file relatively, so the folder moves as one
    return folder / "unet.onnx"


def onnx_runner(size: int, threads: int, cache: Path) -> Callable[[], object]:
    """onnxruntime fp32 CPU session over the exported UNet."""
    import onnxruntime as ort

    path = onnx_path(size, cache, threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    names = [i.name for i in session.get_inputs()]
    feeds = {
        names[0]: rng.standard_normal((1, 4, size // 8, size // 8), dtype=np.float32),
        names[1]: np.array([500], dtype=np.int64),
        names[2]: rng.standard_normal((1, 77, 768), dtype=np.float32) * 0.1,
    }
    return lambda: session.run(None, feeds)


def worker(engine: str, asset_dir: str, size: int, threads: int, runs: int, cache: str) -> dict:
    """Build one engine's UNet, warm it up once, time ``runs`` calls; report peak RSS."""
    start = time.perf_counter()
    if engine == "ncnn":
        run = ncnn_runner(asset_dir, size, threads)
    elif engine == "onnxruntime":
        run = onnx_runner(size, threads, Path(cache))
    else:
        dtype = "float32" if engine.startswith("torch-fp32") else "bfloat16"
        run = torch_runner(dtype, size, threads, batch=2 if engine.endswith("-b2") else 1)
    load_s = time.perf_counter() - start
    run()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"engine": engine, "load_s": load_s, "times": times, "peak_rss_gb": peak_rss_gb()}


def per_step(engine: str, seconds: float) -> float:
    """Seconds per sampling step (cond + uncond) from one call's time."""
    return seconds if engine == "ncnn" or engine.endswith("-b2") else 2 * seconds


def main(argv: list[str]) -> int:
    """Run the engines round-robin and write benchmarks/results/peers-<stem>.json and .md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="asset dir (.param files)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="timed calls per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per engine, interleaved")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "localai-sd-peers")
    parser.add_argument("--stem", default=time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder for the results files")
    args = parser.parse_args(argv)
    engines = []
    for engine in args.engines.split(","):
        if engine not in ENGINES:
            parser.error(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
        reason = available(engine)
        if reason:
            print(reason, file=sys.stderr)
        else:
            engines.append(engine)
    if "ncnn" in engines and not args.assets.is_dir():
        parser.error(f"asset dir {str(args.assets)!r} not found: pass --assets DIR (the .param files)")

    found: dict[str, list[dict]] = {e: [] for e in engines}
    context = multiprocessing.get_context("spawn")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    for _ in range(args.rounds):
        for engine in engines:
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                job = (
                    engine,
                    str(args.assets.resolve()),
                    args.size,
                    args.threads,
                    args.runs,
                    str(args.cache),
                )
                r = pool.submit(worker, *job).result()
            found[engine].append(r)
            print(
                f"{engine:14} load {r['load_s']:.1f} s  runs {[round(t, 2) for t in r['times']]}  "
                f"peak {r['peak_rss_gb']:.2f} GB",
                flush=True,
            )

    rows = []
    base = None
    for engine, results in found.items():
        steps = [per_step(engine, t) for r in results for t in r["times"]]
        row = {
            "engine": engine,
            "min_step_s": min(steps),
            "median_step_s": statistics.median(steps),
            "peak_rss_gb": min(r["peak_rss_gb"] for r in results),
        }
        rows.append(row)
        if engine == "ncnn":
            base = row
    lines = [
        f"UNet {args.size}x{args.size}, {args.threads} threads, per sampling step (cond + uncond), "
        f"{args.rounds} rounds x {args.runs} runs",
        "",
        "| engine | min s/step | median s/step | ncnn ÷ engine (min / median) | peak RSS GB |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = "—"
        if base is not None:
            ratio = f"{base['min_step_s'] / row['min_step_s']:.2f} / {base['median_step_s'] / row['median_step_s']:.2f}"
        lines.append(
            f"| {row['engine']} | {row['min_step_s']:.2f} | {row['median_step_s']:.2f} | {ratio} | "
            f"{row['peak_rss_gb']:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"peers-{args.stem}"
    arguments = {**vars(args), "assets": "/".join(args.assets.parts[-2:]), "cache": None, "results": None}
    document = {"args": arguments, "rows": rows, "results": found}
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2, default=str))
    stem.with_suffix(".md").write_text(table)
    print("wrote", stem.with_suffix(".json"), stem.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
