"""Time to the first image: a cold ``local-ai generate`` (fresh process: load, then 15 steps), and ``local-ai
serve`` with and without ``--lazy-load`` (time until /readyz says ready, then the first request).

The model is the real .param files with synthetic weights of the real size (written once to a temporary
models dir). Each measurement starts a fresh process; the runs are interleaved.

python benchmarks/first_image.py [--assets ../shared/sd-ncnn/assets] [--size 256] [--repeats 1] [--out first-image]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import CLI, free_port

from localai_sd.benchmark import machine_info
from localai_sd.testing.synthetic import install_synthetic_model

DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "sd-ncnn" / "assets"
RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "a photograph of an astronaut riding a horse|blurry"


def cold_generate(models: Path, size: int, out: Path) -> dict[str, float]:
    """Wall time of one fresh ``local-ai generate`` process."""
    start = time.perf_counter()
    subprocess.run(
        [
            *CLI,
            "generate",
            PROMPT,
            "--models-path",
            str(models),
            "--size",
            f"{size}x{size}",
            "--seed",
            "42",
            "--mode",
            "1",
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return {"total_s": time.perf_counter() - start}


def serve_first_request(models: Path, size: int, lazy: bool) -> dict[str, float]:
    """Seconds from starting ``local-ai serve`` until /readyz is 200, then the first request's seconds."""
    port = free_port()
    args = [*CLI, "serve", "--address", f"127.0.0.1:{port}", "--models-path", str(models), "--mode", "1"]
    start = time.perf_counter()
    server = subprocess.Popen(
        [*args, *(["--lazy-load"] if lazy else [])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or busy loading
                pass
            time.sleep(0.1)
        ready_s = time.perf_counter() - start
        body = {"prompt": PROMPT, "size": f"{size}x{size}", "seed": 42, "response_format": "b64_json"}
        t0 = time.perf_counter()
        answer = requests.post(f"{base}/v1/images/generations", json=body, timeout=1800)
        answer.raise_for_status()
        first_s = time.perf_counter() - t0
        return {"ready_s": ready_s, "first_request_s": first_s, "start_to_image_s": ready_s + first_s}
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default="first-image")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        size = f"size: {args.size}x{args.size}\n"
        models = install_synthetic_model(Path(tmp) / "models", args.assets, extra_yaml=size)
        os.environ.setdefault("MAX_MEMORY", "64G")
        for repeat in range(args.repeats):
            for case in ("generate (cold CLI)", "serve", "serve --lazy-load"):
                if case.startswith("generate"):
                    row = cold_generate(models, args.size, Path(tmp) / "out.png")
                else:
                    row = serve_first_request(models, args.size, lazy=case.endswith("lazy-load"))
                rows.append({"round": repeat, "case": case, **{k: round(v, 2) for k, v in row.items()}})
                print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.out}.json"
    out.write_text(
        json.dumps({"machine": machine_info(), "size": args.size, "steps": 15, "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
