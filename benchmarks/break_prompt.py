"""The BREAK-prompt attack of issue 9, measured against a real ``local-ai serve`` process.

A negative prompt of ``"BREAK " * 3000`` once held the worker ~330 s and left 5.5 GB resident: every BREAK
starts a 77-token chunk, encoded against all earlier ones. This script builds a model with the real .param
files and synthetic weights of the real size, starts ``local-ai serve`` on a loopback port, sends the attack
(and a variant under the character limit but over the chunk cap, and a legitimate 7-chunk prompt for scale),
and records the answer, its time and the server's resident memory (VmRSS, VmHWM) after each.

python benchmarks/break_prompt.py [--assets ../shared/sd-ncnn/assets] [--out break-prompt]
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
GB = 1e9
ATTACKS = {
    "BREAK x 3000 (18,000 chars)": "BREAK " * 3000,
    "BREAK x 600 (3,600 chars, 600 chunks)": "BREAK " * 600,
    "legitimate: 7 chunks": " BREAK ".join(["a photo of a cat"] * 7),
}


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, GB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024 / GB
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS)
    parser.add_argument("--out", default="break-prompt")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = install_synthetic_model(Path(tmp) / "models", args.assets)
        port = free_port()
        env = {**os.environ, "MAX_MEMORY": "64G"}
        server = subprocess.Popen(
            [
                *CLI,
                "serve",
                "--address",
                f"127.0.0.1:{port}",
                "--models-path",
                str(models),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(0.5)
            rows.append({"case": "started", **memory(server.pid)})
            for name, negative in ATTACKS.items():
                body = {
                    "prompt": "a cat",
                    "negative_prompt": negative,
                    "size": "256x256",
                    "step": 1,
                    "mode": 0,
                }
                start = time.perf_counter()
                answer = requests.post(f"{base}/v1/images/generations", json=body, timeout=900)
                seconds = time.perf_counter() - start
                error = answer.json().get("error", {}) if answer.status_code != 200 else {}
                rows.append(
                    {
                        "case": name,
                        "status": answer.status_code,
                        "seconds": round(seconds, 3),
                        "param": error.get("param"),
                        "message": (error.get("message") or "")[:160],
                        **memory(server.pid),
                    }
                )
                print(rows[-1], flush=True)
        finally:
            server.terminate()
            server.wait(60)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.out}.json"
    out.write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
