"""Cost of one live preview (cheap latent -> RGB, nearest upscale, PNG) against one UNet step.

Times ``preview_png`` (what the queue runs per step) and its parts on random latents of
(4, 32, 32) (256x256 images) and (4, 64, 64) (512x512), median of many runs, and divides by the
measured seconds of one 256x256 sampling step (benchmarks/results/final-256-mode1.md: ~2.3 s;
override with --step-seconds). Records the CPU (lscpu model and flags).

python benchmarks/preview.py --out preview
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from localai_sd.pipeline.preview import latent_to_rgb, preview_png, resize_png

RESULTS = Path(__file__).resolve().parent / "results"
#: Seconds of one UNet step at 256x256 (2 evaluations with CFG), mode 1, 2 threads, this machine class.
STEP_SECONDS_256 = 2.3
#: One 512x512 step is about 4x the pixels, so at least 4x the work; a conservative lower bound.
STEP_SECONDS_512 = 4 * STEP_SECONDS_256


def lscpu() -> dict[str, str]:
    """The CPU's model name, core count and flags, from lscpu."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model": platform.processor()}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    pick = {"Model name": "model", "CPU(s)": "cpus", "Flags": "flags"}
    return {short: fields[name].strip() for name, short in pick.items() if name in fields}


def median_ms(fn: object, runs: int) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(side: int, runs: int) -> dict[str, float]:
    """Preview timings for a (4, side, side) latent."""
    latent = np.random.default_rng(0).standard_normal((4, side, side)).astype(np.float32)
    png, _, _ = preview_png(latent)
    return {
        "latent_to_rgb_ms": median_ms(lambda: latent_to_rgb(latent), runs),
        "preview_png_ms": median_ms(lambda: preview_png(latent), runs),
        "preview_bytes": len(png),
        "partial_image_resize_ms": median_ms(lambda: resize_png(png, side * 8, side * 8), max(5, runs // 10)),
    }


def main() -> None:
    """Measure, print, and write results/<out>.json and .md."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--step-seconds", type=float, default=STEP_SECONDS_256)
    parser.add_argument("--out", default="preview")
    args = parser.parse_args()
    rows = {}
    for side, step_seconds in ((32, args.step_seconds), (64, STEP_SECONDS_512)):
        row = measure(side, args.runs)
        row["step_seconds"] = step_seconds
        row["preview_share_of_step_percent"] = round(100 * row["preview_png_ms"] / (step_seconds * 1000), 4)
        rows[f"{side * 8}x{side * 8}"] = row
    cpu = lscpu()
    result = {"cpu": cpu, "runs": args.runs, "sizes": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Live preview cost per step",
        "",
        f"CPU: {cpu.get('model', '?')}, {cpu.get('cpus', '?')} CPUs; flags: {cpu.get('flags', '?')}",
        "",
        "| image | latent | latent->RGB ms | preview PNG ms (total) | PNG bytes | step s | share of a step | partial image resize ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, row in rows.items():
        side = int(size.split("x")[0]) // 8
        lines.append(
            f"| {size} | (4,{side},{side}) | {row['latent_to_rgb_ms']:.3f} | {row['preview_png_ms']:.3f} | "
            f"{row['preview_bytes']} | {row['step_seconds']} | {row['preview_share_of_step_percent']:.3f}% | "
            f"{row['partial_image_resize_ms']:.2f} |"
        )
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
