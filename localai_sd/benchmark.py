"""Benchmark: time a warm request of ours against the LocalAI-equivalent cold request, one fresh process each.

Each trial runs in a new spawned process so that its peak RSS (``VmHWM``) belongs to that configuration
alone. Contenders alternate (ours, localai, ours, localai, ...) because small machines throttle in bursts;
the summary reports min and median of each and their ratio.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

#: The two contenders: our warm pipeline, and LocalAI's per-request load of every net.
OURS = "ours"
LOCALAI = "localai"
CONTENDERS = (OURS, LOCALAI)
#: Fixed prompt and seed so every trial does the same work.
PROMPT = "a photograph of an astronaut riding a horse, highly detailed | lowres, blurry"
SEED = 42
#: The reference's sampler and guidance scale (EdVince diffusion_slover.cpp; LocalAI stablediffusion backend).
REFERENCE_SAMPLER = "euler_a"
REFERENCE_CFG_SCALE = 7.5
#: The img2img encoder the reference loads with every request exists only for 512x512 (EdVince assets).
ENCODER_SIZE = 512
#: Linux reports ru_maxrss in KiB.
KIB = 1024
GB = 1e9


@dataclass(frozen=True)
class Target:
    """What to load: an asset dir (real .bin files, or synthetic weights of the real layout)."""

    asset_dir: str
    backend: str = "stablediffusion"
    synthetic: bool = False
    threads: int | None = None
    #: Our pipeline's low-memory setting (text encoder and decoder loaded per use, plain-conv decoder).
    low_memory: bool = False


#: Progress from inside a trial: (phase, step done, steps); phase is "load", "encode", "sample" or "decode".
Progress = Callable[[str, int, int], None]


def _no_progress(phase: str, step: int, steps: int) -> None:
    """The default progress callback: report nothing."""


@dataclass(frozen=True)
class TrialSpec:
    """One timed request: which contender, image size, UNet mode and step count."""

    contender: str
    size: int
    mode: int
    steps: int


@dataclass
class TrialResult:
    """Seconds per phase of one request, the share of it outside ncnn, and the process's peak RSS."""

    spec: TrialSpec
    load_s: float
    encode_s: float
    step_s: float
    decode_s: float
    request_s: float
    ncnn_s: float
    peak_rss_gb: float

    @property
    def outside_ncnn(self) -> float:
        """Share of the request (load excluded) spent outside ncnn calls."""
        busy = self.request_s - (self.load_s if self.spec.contender == LOCALAI else 0.0)
        return max(0.0, 1.0 - self.ncnn_s / busy) if busy > 0 else 0.0


def _synthetic(target: Target):  # -> SyntheticWeights | None
    """Synthetic weights for a target that asks for them."""
    from localai_sd.testing.synthetic import SyntheticWeights

    return SyntheticWeights() if target.synthetic else None


def process_memory() -> dict[str, int]:
    """This process's resident memory now (``VmRSS``) and at its peak (``VmHWM``) in bytes; {} without /proc."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * KIB
    return fields


def _peak_rss_gb() -> float:
    """Peak resident set size of this process's own memory so far, in GB.

    VmHWM belongs to the process image, so a spawned child starts from zero. ``ru_maxrss`` does not: Linux keeps
    it across fork and exec, and a trial spawned from a 5 GB test process reported 5.09 GB.
    """
    peak = process_memory().get("VmHWM")
    return (peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB) / GB


def run_ours(target: Target, spec: TrialSpec, progress: Progress = _no_progress) -> TrialResult:
    """Our path: load the pipeline first (untimed for the request), then time one warm request."""
    from localai_sd.pipeline.pipeline import StableDiffusion
    from localai_sd.pipeline.request import GenerationRequest

    progress("load", 0, spec.steps)
    start = time.perf_counter()
    sd = StableDiffusion.from_dir(
        Path(target.asset_dir),
        backend=target.backend,
        threads=target.threads,
        synthetic=_synthetic(target),
        low_memory=target.low_memory,
    )
    sd.warm(spec.size, spec.size, spec.mode)
    load_s = time.perf_counter() - start
    request = GenerationRequest.create(
        PROMPT, size=f"{spec.size}x{spec.size}", steps=spec.steps, mode=spec.mode, seed=SEED
    )
    progress("encode", 0, spec.steps)
    start = time.perf_counter()
    sd.generate(request, on_step=lambda event: progress("sample", event.step, event.steps))
    request_s = time.perf_counter() - start
    t = sd.timings
    sd.close()
    return TrialResult(
        spec, load_s, t.encode, t.sample / spec.steps, t.decode, request_s, t.ncnn, _peak_rss_gb()
    )


def run_localai(target: Target, spec: TrialSpec, progress: Progress = _no_progress) -> TrialResult:
    """LocalAI-equivalent: load every net (img2img encoder too, reference decoder options), euler_a, release."""
    import numpy as np

    from localai_sd.pipeline import nets
    from localai_sd.pipeline.assets import AssetSet
    from localai_sd.pipeline.denoiser import DiscreteSchedule, cfg_denoiser, load_log_sigmas, sd1_log_sigmas
    from localai_sd.pipeline.ncnn_runtime import NcnnModel
    from localai_sd.pipeline.netset import load_decoder, load_encoder, load_text_encoder, load_unet
    from localai_sd.pipeline.netspec import LATENT_CHANNELS, VAE_SCALE
    from localai_sd.pipeline.output import decoder_to_pixels, encode_png
    from localai_sd.pipeline.prompt import build_chunks
    from localai_sd.pipeline.request import split_negative
    from localai_sd.pipeline.samplers import SAMPLERS, get_sigmas_default
    from localai_sd.pipeline.tokenizer import ClipTokenizer

    weights = _synthetic(target)
    progress("load", 0, spec.steps)
    start = time.perf_counter()
    assets = AssetSet.from_dir(target.asset_dir, target.backend)
    tokenizer = ClipTokenizer(assets.vocab_path)
    sigmas_path = assets.log_sigmas_path
    schedule = DiscreteSchedule(load_log_sigmas(sigmas_path) if sigmas_path else sd1_log_sigmas())
    common = {"threads": target.threads, "weights": weights}
    loaded: list[NcnnModel] = [load_text_encoder(assets, **common)]
    unet = load_unet(assets, spec.size, spec.size, mode=spec.mode, **common)
    decoder = load_decoder(assets, spec.size, spec.size, reference_options=True, **common)
    loaded += [unet, decoder]
    if assets.has_encoder:
        loaded.append(load_encoder(assets, ENCODER_SIZE, ENCODER_SIZE, **common))
    load_s = time.perf_counter() - start

    progress("encode", 0, spec.steps)
    t0 = time.perf_counter()
    positive, negative = split_negative(PROMPT)
    text_encoder = loaded[0]
    assert isinstance(text_encoder, nets.TextEncoder)
    conds = [
        text_encoder.encode(
            [(np.asarray(c.tokens), np.asarray(c.multipliers)) for c in build_chunks(t, tokenizer)]
        )
        for t in (positive, negative)
    ]
    encode_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    sigmas = get_sigmas_default(spec.steps, schedule)
    model = cfg_denoiser(unet, schedule, conds[0], conds[1], REFERENCE_CFG_SCALE)
    rng = np.random.Generator(np.random.PCG64(SEED))
    shape = (LATENT_CHANNELS, spec.size // VAE_SCALE, spec.size // VAE_SCALE)
    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigmas[0])
    latent = SAMPLERS[REFERENCE_SAMPLER](
        model, x, sigmas, rng=rng, callback=lambda info: progress("sample", info["i"] + 1, spec.steps)
    )
    sample_s = time.perf_counter() - t0

    progress("decode", spec.steps, spec.steps)
    t0 = time.perf_counter()
    encode_png(decoder_to_pixels(decoder(latent)), "")
    decode_s = time.perf_counter() - t0
    ncnn_s = sum(net.ncnn_seconds for net in loaded)
    for net in loaded:
        net.close()
    request_s = time.perf_counter() - start
    return TrialResult(
        spec, load_s, encode_s, sample_s / spec.steps, decode_s, request_s, ncnn_s, _peak_rss_gb()
    )


RUNNERS: dict[str, Callable[[Target, TrialSpec, Progress], TrialResult]] = {
    OURS: run_ours,
    LOCALAI: run_localai,
}


def run_trial(target: Target, spec: TrialSpec, progress: Progress = _no_progress) -> TrialResult:
    """Run one trial in-process (used inside the fresh worker process)."""
    if spec.contender not in RUNNERS:
        raise ValueError(f"contender {spec.contender!r} is unknown: use one of {', '.join(CONTENDERS)}")
    return RUNNERS[spec.contender](target, spec, progress)


def _trial_child(target: Target, spec: TrialSpec, conn: Connection) -> None:
    """Body of the fresh process: run the trial, sending progress and then the result (or the error)."""
    try:
        result = run_trial(
            target, spec, lambda phase, step, steps: conn.send(("progress", phase, step, steps))
        )
        conn.send(("result", result))
    except BaseException as exc:  # reported to the parent, which raises it there
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_isolated(target: Target, spec: TrialSpec, progress: Progress = _no_progress) -> TrialResult:
    """Run one trial in a freshly spawned process, so its peak RSS is its own; relay its progress."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_trial_child, args=(target, spec, sender), daemon=True)
    child.start()
    sender.close()
    try:
        while True:
            try:
                message = receiver.recv()
            except EOFError:
                child.join()
                raise RuntimeError(
                    f"the {spec.contender} trial process died (exit code {child.exitcode})"
                ) from None
            if message[0] == "progress":
                progress(*message[1:])
            elif message[0] == "result":
                return message[1]
            else:
                raise RuntimeError(f"the {spec.contender} trial failed: {message[1]}")
    finally:
        receiver.close()
        child.join()


def interleaved_specs(
    sizes: list[int], modes: list[int], steps: int, repeats: int, contenders: tuple[str, ...] = CONTENDERS
) -> Iterator[TrialSpec]:
    """Trials per (size, mode) in the order A, B, A, B, ... ``repeats`` times."""
    for size in sizes:
        for mode in modes:
            for _ in range(repeats):
                for contender in contenders:
                    yield TrialSpec(contender, size, mode, steps)


@dataclass
class Summary:
    """Min and median of each metric for one contender at one size and mode."""

    contender: str
    size: int
    mode: int
    runs: int
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)


METRICS = ("load_s", "encode_s", "step_s", "decode_s", "request_s", "outside_ncnn", "peak_rss_gb")


def summarize(results: list[TrialResult]) -> list[Summary]:
    """Group trials by (contender, size, mode) and take min and median of every metric."""
    groups: dict[tuple[str, int, int], list[TrialResult]] = {}
    for r in results:
        groups.setdefault((r.spec.contender, r.spec.size, r.spec.mode), []).append(r)
    summaries = []
    for (contender, size, mode), group in groups.items():
        summary = Summary(contender, size, mode, len(group))
        for name in METRICS:
            values = [float(getattr(r, name)) for r in group]
            summary.metrics[name] = (min(values), statistics.median(values))
        summaries.append(summary)
    return summaries


def ratio(summaries: list[Summary], size: int, mode: int) -> tuple[float, float] | None:
    """Ours / LocalAI request time at (size, mode), by min and by median; None without both contenders."""
    found = {s.contender: s for s in summaries if s.size == size and s.mode == mode}
    if OURS not in found or LOCALAI not in found:
        return None
    ours, ref = found[OURS].metrics["request_s"], found[LOCALAI].metrics["request_s"]
    return ours[0] / ref[0], ours[1] / ref[1]


def markdown_table(summaries: list[Summary]) -> str:
    """A Markdown table: one row per contender, size and mode, with the ours/LocalAI ratio."""
    head = (
        "| size | mode | path | runs | load s | encode s | s/step (pair) | decode s | request s (min / med) "
        "| ours÷LocalAI (min / med) | outside ncnn | peak RSS GB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for s in sorted(summaries, key=lambda s: (s.size, s.mode, s.contender != OURS)):
        m = s.metrics
        r = ratio(summaries, s.size, s.mode) if s.contender == OURS else None
        rows.append(
            f"| {s.size} | {s.mode} | {s.contender} | {s.runs} | {m['load_s'][0]:.1f} | {m['encode_s'][0]:.2f} "
            f"| {m['step_s'][0]:.2f} | {m['decode_s'][0]:.2f} | {m['request_s'][0]:.1f} / {m['request_s'][1]:.1f} "
            f"| {f'{r[0]:.2f} / {r[1]:.2f}' if r else ''} | {m['outside_ncnn'][1]:.2%} "
            f"| {m['peak_rss_gb'][0]:.2f} |"
        )
    return head + "\n".join(rows) + "\n"


#: CPU features that decide which ncnn / PyTorch kernels run (AVX-512 and its bf16/VNNI parts above all).
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16")


def cpu_description(cpuinfo: str) -> dict[str, object]:
    """CPU model name and the ISA_FLAGS present, from the text of Linux's /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", "unknown"), "isa": [f for f in ISA_FLAGS if f in flags]}


def machine_info() -> dict[str, object]:
    """CPU count, model and features, platform and ncnn version, recorded with every results file."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ncnn_version = version("ncnn")
    except PackageNotFoundError:
        ncnn_version = "unknown"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        cpu = cpu_description(Path("/proc/cpuinfo").read_text())
    except OSError:
        cpu = {"cpu": "unknown", "isa": []}
    return {
        "cpus": cpus,
        **cpu,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "ncnn": ncnn_version,
    }


def run_benchmark(
    target: Target,
    *,
    sizes: list[int],
    modes: list[int],
    steps: int,
    repeats: int,
    contenders: tuple[str, ...] = CONTENDERS,
    on_result: Callable[[TrialResult], None] | None = None,
    on_progress: Callable[[int, int, TrialSpec, str, int, int], None] | None = None,
) -> list[TrialResult]:
    """Run every trial, interleaved, each in a fresh process; report progress and each result as it lands.

    ``on_progress(trial, trials, spec, phase, step, steps)`` is called as the trial's process reports.
    """
    results = []
    specs = list(interleaved_specs(sizes, modes, steps, repeats, contenders))
    for number, spec in enumerate(specs, 1):

        def progress(phase: str, step: int, total: int, number: int = number, spec: TrialSpec = spec) -> None:
            if on_progress is not None:
                on_progress(number, len(specs), spec, phase, step, total)

        result = run_isolated(target, spec, progress)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def results_document(target: Target, results: list[TrialResult], summaries: list[Summary]) -> dict:
    """The JSON results: machine, target, every trial and the summary."""
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        # Only the asset dir's last two parts: results files are shared, machine paths are not.
        "target": {**asdict(target), "asset_dir": "/".join(Path(target.asset_dir).parts[-2:])},
        "trials": [{**asdict(r), "outside_ncnn": r.outside_ncnn} for r in results],
        "summary": [asdict(s) for s in summaries],
    }


def write_results(out_dir: Path, stem: str, document: dict, table: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    md_path.write_text(table)
    return json_path, md_path
