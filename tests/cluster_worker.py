"""A cluster worker for the tests: ``local-ai worker`` with the tiny nets slowed down per step.

Run as ``python tests/cluster_worker.py --redis URL --models-path DIR --name NAME --step-seconds S``; the
cluster settings (``WORKER_TTL``, ``JOB_GRACE``, ...) come from the environment as for the real command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_helpers import slow_loader

from localai_sd.jobs.rq_worker import serve_forever
from localai_sd.server.models_cache import ModelCache
from localai_sd.settings import Settings


def main() -> None:
    """Parse the flags and work until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--models-path", type=Path, required=True)
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--name", required=True)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    args = parser.parse_args()
    settings = Settings.from_env(
        dict(os.environ), redis_url=args.redis, models_path=args.models_path, threads=1
    )
    models = args.model or ["stablediffusion"]
    serve_forever(settings, models, ModelCache(slow_loader(args.step_seconds), len(models)), name=args.name)


if __name__ == "__main__":
    main()
