"""The cluster path (RQ on Redis) against the local queue, with the tiny nets.

1. Overhead per job: the same tiny request (64x64, 3 steps) sent one after another to a local ``serve``
   and to a ``serve --redis`` with one ``local-ai worker``; median latency of each and their difference.
2. Throughput: jobs per minute with 1 and 2 workers, 8 concurrent clients, each job slowed to
   ``--step-seconds`` per step (so that the jobs, not the 2-core test box, are the bottleneck).

Starts its own loopback redis-server and worker processes; writes benchmarks/results/cluster.json with the
CPU (lscpu model and flags). Usage: ``python benchmarks/cluster.py [--jobs 20] [--step-seconds 0.25]``;
``python benchmarks/cluster.py --real ../shared/sd-ncnn/assets --jobs 3`` measures the overhead per job on the
real architecture at 256 (cluster-real-256.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cluster_helpers import BODY, cluster_settings, redis_server, workers  # noqa: E402
from preview import lscpu  # noqa: E402
from server_helpers import live_server  # noqa: E402

from localai_sd.server.app import create_app  # noqa: E402
from localai_sd.settings import Settings  # noqa: E402
from localai_sd.testing.tiny import build_tiny_assets  # noqa: E402


def tiny_models(root: Path) -> Path:
    """A models dir with the tiny ``stablediffusion``."""
    build_tiny_assets(root / "stablediffusion_assets", backend="stablediffusion")
    (root / "stablediffusion.yaml").write_text(
        "name: stablediffusion\nbackend: stablediffusion\nparameters:\n  model: stablediffusion_assets\n"
    )
    return root


def latencies_ms(base: str, jobs: int, body: dict | None = None, timeout: float = 60) -> list[float]:
    """Wall time of ``jobs`` sequential generations, ms (after one warm-up)."""
    body = BODY if body is None else body
    httpx.post(f"{base}/v1/images/generations", json=body, timeout=timeout).raise_for_status()
    times = []
    for seed in range(jobs):
        start = time.perf_counter()
        httpx.post(
            f"{base}/v1/images/generations", json={**body, "seed": seed}, timeout=timeout
        ).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return times


def jobs_per_minute(base: str, jobs: int, clients: int = 8) -> float:
    """Generations finished per minute with ``clients`` concurrent clients."""

    def one(seed: int) -> None:
        httpx.post(
            f"{base}/v1/images/generations", json={**BODY, "seed": seed}, timeout=300
        ).raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(jobs)))
    return jobs / (time.perf_counter() - start) * 60


#: The real-architecture request: the default one at 256x256 (15 steps), mode 1.
REAL_BODY = {"prompt": "a red house|blurry", "size": "256x256", "step": 15, "seed": 42, "mode": 1,
             "response_format": "b64_json"}  # fmt: skip


def real_overhead(assets: Path, jobs: int) -> None:
    """Overhead per job on the real architecture at 256 (real .params, synthetic weights of the real size):
    the same request to a local ``serve`` and through Redis to one ``local-ai worker``; writes cluster-real-256."""
    from localai_sd.testing.synthetic import install_synthetic_model

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = install_synthetic_model(tmp / "models", assets)
        local = create_app(Settings(models_path=models, image_path=tmp / "local-images"))
        with live_server(local) as base:
            local_ms = latencies_ms(base, jobs, REAL_BODY, timeout=900)
        (tmp / "redis").mkdir()
        with redis_server(tmp / "redis") as redis:
            settings = cluster_settings(
                models, redis.url, tmp, job_timeout_floor_seconds=900, step_seconds_512=12.0
            )
            with (
                live_server(create_app(settings)) as base,
                workers(redis.url, models, tmp, "w1", cli=True, threads=None),
            ):
                cluster_ms = latencies_ms(base, jobs, REAL_BODY, timeout=900)
    result = {
        "cpu": lscpu(),
        "request": REAL_BODY,
        "jobs": jobs,
        "local_ms": [round(t) for t in local_ms],
        "cluster_ms": [round(t) for t in cluster_ms],
        "overhead_ms_median": round(statistics.median(cluster_ms) - statistics.median(local_ms), 1),
        "overhead_share": round(statistics.median(cluster_ms) / statistics.median(local_ms) - 1, 4),
    }
    out = ROOT / "benchmarks" / "results" / "cluster-real-256.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "cpu"}, indent=2))


def main() -> None:
    """Measure and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=0.25)
    parser.add_argument("--real", type=Path, help="the real .param dir: measure the overhead at 256 instead")
    args = parser.parse_args()
    if args.real is not None:
        real_overhead(args.real, args.jobs)
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = tiny_models(tmp / "models")
        local = create_app(Settings(models_path=models, image_path=tmp / "local-images", threads=1))
        with live_server(local) as base:
            local_ms = latencies_ms(base, args.jobs)
        (tmp / "redis").mkdir()
        with redis_server(tmp / "redis") as redis:
            app = create_app(cluster_settings(models, redis.url, tmp, queue_size=64))
            with live_server(app) as base:
                with workers(redis.url, models, tmp, "w1", cli=True):
                    cluster_ms = latencies_ms(base, args.jobs)
                throughput = {}
                for names in (("s1",), ("s1", "s2")):
                    with workers(redis.url, models, tmp, *names, step_seconds=args.step_seconds):
                        throughput[len(names)] = jobs_per_minute(base, args.jobs)
    result = {
        "cpu": lscpu(),
        "request": BODY,
        "jobs": args.jobs,
        "local_ms_median": round(statistics.median(local_ms), 1),
        "cluster_ms_median": round(statistics.median(cluster_ms), 1),
        "overhead_ms_median": round(statistics.median(cluster_ms) - statistics.median(local_ms), 1),
        "throughput_step_seconds": args.step_seconds,
        "job_seconds_estimate": args.step_seconds * BODY["step"],  # type: ignore[operator]
        "jobs_per_minute": {f"{k} worker(s)": round(v, 1) for k, v in throughput.items()},
    }
    out = ROOT / "benchmarks" / "results" / "cluster.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "cpu"}, indent=2))


if __name__ == "__main__":
    main()
