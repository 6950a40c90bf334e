"""Benchmark localai-sd against the LocalAI-equivalent path; writes benchmarks/results/<stem>.json and .md.

Usage (from the repo root):
    python benchmarks/bench.py --assets ../shared/sd-ncnn/assets --synthetic --size 256 --mode 1 --repeats 3
    python benchmarks/bench.py --quick          # 256x256, mode 1, 2 steps, one pair
    python benchmarks/bench.py --size 256 --peers   # then the UNet step through PyTorch / onnxruntime
The same measurement is available as ``local-ai benchmark``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from localai_sd import benchmark

#: Where the real .param files live relative to this repo (the shared EdVince asset set).
DEFAULT_ASSETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "sd-ncnn" / "assets"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="asset dir (.param files)")
    parser.add_argument(
        "--real-weights", action="store_true", help="read the .bin files, not synthetic weights"
    )
    parser.add_argument("--size", type=int, action="append", help="image side (repeatable; default 256)")
    parser.add_argument("--mode", type=int, action="append", help="UNet mode 0/1 (repeatable; default 1)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved pairs per size and mode")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--low-memory", action="store_true", help="our pipeline's low-memory setting")
    parser.add_argument("--ours-only", action="store_true", help="skip the LocalAI-equivalent contender")
    parser.add_argument("--quick", action="store_true", help="256x256, mode 1, 2 steps, one pair")
    parser.add_argument("--stem", default=None, help="results file name (default: a timestamp)")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also time the same UNet step in PyTorch fp32/bf16 and onnxruntime (benchmarks/peers.py)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Run the benchmark and write the results files."""
    args = parse_args(argv)
    if not args.assets.is_dir():
        print(
            f"asset dir {str(args.assets)!r} not found: pass --assets DIR (the .param files)", file=sys.stderr
        )
        return 2
    sizes, modes, steps, repeats = args.size or [256], args.mode or [1], args.steps, args.repeats
    if args.quick:
        sizes, modes, steps, repeats = [256], [1], 2, 1
    target = benchmark.Target(
        str(args.assets.resolve()),
        synthetic=not args.real_weights,
        threads=args.threads,
        low_memory=args.low_memory,
    )
    contenders = (benchmark.OURS,) if args.ours_only else benchmark.CONTENDERS

    def show(r: benchmark.TrialResult) -> None:
        s = r.spec
        print(
            f"{s.contender:8} {s.size} mode {s.mode}: request {r.request_s:.1f} s, load {r.load_s:.1f} s, "
            f"{r.step_s:.2f} s/step, decode {r.decode_s:.2f} s, outside ncnn {r.outside_ncnn:.2%}, "
            f"peak RSS {r.peak_rss_gb:.2f} GB",
            flush=True,
        )

    results = benchmark.run_benchmark(
        target, sizes=sizes, modes=modes, steps=steps, repeats=repeats, contenders=contenders, on_result=show
    )
    summaries = benchmark.summarize(results)
    table = benchmark.markdown_table(summaries)
    stem = args.stem or time.strftime("bench-%Y%m%d-%H%M%S")
    document = benchmark.results_document(target, results, summaries)
    paths = benchmark.write_results(RESULTS_DIR, stem, document, table)
    print(table)
    print("wrote", *paths)
    if args.peers:
        import peers  # this script's folder is on sys.path

        for size in sizes:
            peers.main(["--assets", str(args.assets), "--size", str(size), "--stem", f"{stem}-{size}"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
