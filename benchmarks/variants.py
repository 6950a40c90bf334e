"""Request variants on the real architecture (real .param files, synthetic weights of the real size), each in a
fresh process, interleaved: the speed-ups of issue 13 and the edits of issue 10, against exact txt2img and the
LocalAI-equivalent path (localai_sd/benchmark.py ``run_localai``).

python benchmarks/variants.py --suite speedups --size 256 --size 512 --out speedups
python benchmarks/variants.py --suite edits --size 256 --out edits
python benchmarks/variants.py --suite masked --out only-masked     # 128x128 mask in a 1024x768 photo
python benchmarks/variants.py --suite encoder --size 256 --size 512 --out vae-encoder

Each result records load time, request time, UNet passes (full and DeepCache partial), the VAE encoder's time
and the process's peak RSS; the results file records the CPU's ISA flags, the ncnn version and the threads.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localai_sd import benchmark

DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "sd-ncnn" / "assets"
RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = benchmark.PROMPT
SEED = benchmark.SEED
KIB, GB = 1024, 1e9
#: Kynkäänniemi et al.'s Stable Diffusion interval (WAVE2 §5.1).
PAPER_INTERVAL = [0.28, 5.42]

SPEEDUPS: dict[str, dict[str, Any]] = {
    "exact": {},
    "guidance interval (0.28, 5.42]": {"guidance_interval": PAPER_INTERVAL},
    "s_min_uncond 1.0": {"s_min_uncond": 1.0},
    "DeepCache 2": {"deepcache_interval": 2},
    "DeepCache 3": {"deepcache_interval": 3},
    "DeepCache 5": {"deepcache_interval": 5},
    "interval + DeepCache 3": {"guidance_interval": PAPER_INTERVAL, "deepcache_interval": 3},
    "lcm, 4 steps, CFG 1": {"sampler": "lcm", "steps": 4, "cfg_scale": 1.0},
}
EDITS: dict[str, dict[str, Any]] = {
    "txt2img": {},
    "img2img 0.25": {"edit": {"strength": 0.25}},
    "img2img 0.5": {"edit": {"strength": 0.5}},
    "img2img 0.75": {"edit": {"strength": 0.75}},
    "img2img 1.0": {"edit": {"strength": 1.0}},
}
#: A 128x128 mask in a 1024x768 photo: the whole picture against "inpaint only masked" (padding 32).
MASKED: dict[str, dict[str, Any]] = {
    "only masked": {"edit": {"mask": True, "inpaint_only_masked": True}},
    "whole picture": {"edit": {"mask": True}},
}


@dataclass(frozen=True)
class Case:
    """One request variant at one size."""

    name: str
    size: tuple[int, int]
    fields: dict[str, Any]
    mode: int = 1
    steps: int = 15
    low_memory: bool = False
    #: Run each step's cond and uncond passes one after the other on all threads (not side by side).
    in_turn: bool = False


@dataclass
class Result:
    """What one fresh process measured."""

    case: Case
    load_s: float
    request_s: float
    vae_encode_s: float
    sample_s: float
    decode_s: float
    full_passes: int
    partial_passes: int
    peak_rss_gb: float
    extra: dict[str, Any] = field(default_factory=dict)


def photo(width: int, height: int):  # -> np.ndarray
    """A smooth synthetic photo (gradients), the same every run."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1).astype(
        np.uint8
    )


def run_case(assets: str, case: Case, threads: int | None) -> Result:
    """Body of the fresh process: load, warm, then one timed request (LocalAI's path for ``localai``)."""
    import numpy as np

    from localai_sd.pipeline import img2img
    from localai_sd.pipeline.images_in import DecodedImage
    from localai_sd.pipeline.pipeline import StableDiffusion, runs_in_pairs
    from localai_sd.pipeline.request import GenerationRequest
    from localai_sd.testing.synthetic import SyntheticWeights

    width, height = case.size
    if case.name == "VAE encoder":
        return run_encoder(assets, case, threads)
    if case.name == "LocalAI-equivalent":
        target = benchmark.Target(assets, synthetic=True, threads=threads)
        trial = benchmark.run_localai(target, benchmark.TrialSpec("localai", width, case.mode, case.steps))
        passes = 2 * case.steps
        return Result(case, trial.load_s, trial.request_s, 0.0, trial.step_s * case.steps, trial.decode_s,
                      passes, 0, trial.peak_rss_gb)  # fmt: skip
    start = time.perf_counter()
    sd = StableDiffusion.from_dir(
        Path(assets), threads=threads, synthetic=SyntheticWeights(), low_memory=case.low_memory
    )
    sd.nets.parallel_guidance = not case.in_turn
    fields = {k: v for k, v in case.fields.items() if k != "edit"}
    request = GenerationRequest.create(
        PROMPT,
        size=f"{width}x{height}",
        steps=fields.pop("steps", case.steps),
        mode=case.mode,
        seed=SEED,
        **fields,
    )
    edit = None
    if "edit" in case.fields:
        spec = dict(case.fields["edit"])
        mask = None
        if spec.pop("mask", False):
            m = np.zeros((height, width), np.uint8)
            m[300:428, 600:728] = 255  # 128 x 128
            mask = DecodedImage(np.repeat(m[..., None], 3, -1))
        edit = img2img.EditSpec(DecodedImage(photo(width, height)), mask, **spec)
    if case.low_memory:
        sd.nets.after_encoding()
    else:
        sd.warm(width, height, request.mode)
        # The UNet this request runs on: guidance limits and CFG 1 take it on all threads, not in pairs.
        sd.unet(width, height, request.mode, guided=runs_in_pairs(request))
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    sd.generate(request, edit=edit)
    request_s = time.perf_counter() - start
    t = sd.timings
    runs, partial = t.unet_passes, t.unet_partial
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB / GB
    sd.close()
    return Result(case, load_s, request_s, t.vae_encode, t.sample, t.decode, runs - partial, partial, peak)


def run_encoder(assets: str, case: Case, threads: int | None) -> Result:
    """The img2img VAE encoder alone: load, then one encode of a photo; its time and the process's peak RSS."""
    from localai_sd.pipeline.assets import AssetSet
    from localai_sd.pipeline.img2img import pixels_to_encoder
    from localai_sd.pipeline.netset import load_encoder
    from localai_sd.testing.synthetic import SyntheticWeights

    width, height = case.size
    start = time.perf_counter()
    encoder = load_encoder(
        AssetSet.from_dir(assets), width, height, weights=SyntheticWeights(), threads=threads
    )
    load_s = time.perf_counter() - start
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB / GB
    start = time.perf_counter()
    encoder(pixels_to_encoder(photo(width, height)))
    encode_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB / GB
    encoder.close()
    return Result(case, load_s, encode_s, encode_s, 0.0, 0.0, 0, 0, peak, {"peak_after_load_gb": rss_loaded})


def _child(assets: str, case: Case, threads: int | None, conn: Any) -> None:
    try:
        conn.send(("ok", run_case(assets, case, threads)))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def run_isolated(assets: str, case: Case, threads: int | None) -> Result | str:
    """One case in a freshly spawned process (its peak RSS is its own); the error text if it failed."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(assets, case, threads, sender))
    child.start()
    sender.close()
    try:
        kind, value = receiver.recv()
    except EOFError:
        value, kind = f"process died (exit code {child.join() or child.exitcode})", "error"
    child.join()
    return value if kind == "ok" else str(value)


def cases(suite: str, sizes: list[int]) -> list[Case]:
    """The cases of a suite at each size."""
    if suite == "encoder":
        return [Case("VAE encoder", (size, size), {}) for size in sizes]
    if suite == "masked":
        return [
            Case(name, (1024, 768), fields, mode=0, steps=2, low_memory=True)
            for name, fields in MASKED.items()
        ]
    table = SPEEDUPS if suite == "speedups" else EDITS
    out = []
    for size in sizes:
        out += [Case(name, (size, size), fields) for name, fields in table.items()]
        if suite == "speedups":
            out.append(Case("exact, cond and uncond in turn", (size, size), {}, in_turn=True))
            out.append(Case("LocalAI-equivalent", (size, size), {}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS)
    parser.add_argument("--suite", choices=("speedups", "edits", "masked", "encoder"), required=True)
    parser.add_argument("--size", type=int, action="append")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--only", action="append", help="run only the cases whose name contains this (repeatable)"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    plan = [
        c
        for c in cases(args.suite, args.size or [256])
        if not args.only or any(o in c.name for o in args.only)
    ]
    results: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for case in plan:  # interleaved: every case once per round
            got = run_isolated(str(args.assets.resolve()), case, args.threads)
            row = {"round": repeat, "case": asdict(case)}
            row.update(asdict(got) if isinstance(got, Result) else {"error": got})
            results.append(row)
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "case"}
            print(case.name, case.size, shown, flush=True)
    RESULTS.mkdir(exist_ok=True)
    document = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": benchmark.machine_info(),
                "threads": args.threads or benchmark.machine_info()["cpus"], "suite": args.suite, "results": results}  # fmt: skip
    path = RESULTS / f"{args.out}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
