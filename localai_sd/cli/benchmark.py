"""``local-ai benchmark``: seconds per step on this machine, for an installed model or synthetic weights."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from localai_sd import benchmark
from localai_sd.cli.app import handle_errors, stderr_console
from localai_sd.errors import InvalidRequest
from localai_sd.models import load_config

#: --quick: one 256x256 mode-1 pair at 2 steps (CI proves the benchmark runs; minutes, not tens of minutes).
QUICK = {"sizes": [256], "modes": [1], "steps": 2, "repeats": 1}


def resolve_target(
    model: str | None,
    models_path: Path,
    assets: Path | None,
    synthetic: bool,
    threads: int | None,
    low_memory: bool = False,
) -> benchmark.Target:
    """The asset dir to measure: an installed model's, or --assets (with --synthetic for params only)."""
    if (model is None) == (assets is None):
        raise InvalidRequest("give exactly one of --model NAME or --assets DIR to benchmark")
    if assets is not None:
        if not assets.is_dir():
            raise InvalidRequest(f"--assets {str(assets)!r} is not a directory")
        return benchmark.Target(
            str(assets.resolve()), synthetic=synthetic, threads=threads, low_memory=low_memory
        )
    assert model is not None
    config = load_config(models_path, model)
    return benchmark.Target(
        str(config.asset_dir),
        backend=config.backend,
        synthetic=synthetic,
        threads=threads,
        low_memory=low_memory,
    )


def benchmark_command(
    model: Annotated[str | None, typer.Option(help="An installed model to measure.")] = None,
    models_path: Annotated[Path, typer.Option(envvar="MODELS_PATH", help="Where models live.")] = Path(
        "models"
    ),
    assets: Annotated[
        Path | None, typer.Option(help="An asset dir to measure instead of an installed model.")
    ] = None,
    synthetic: Annotated[
        bool, typer.Option(help="Random weights of the real layout: only the .param files are needed.")
    ] = False,
    size: Annotated[list[int] | None, typer.Option(help="Image side in pixels (repeatable).")] = None,
    mode: Annotated[list[int] | None, typer.Option(help="UNet mode 0 or 1 (repeatable).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Sampling steps per request.")] = 15,
    repeats: Annotated[int, typer.Option(min=1, help="Runs per size and mode.")] = 1,
    threads: Annotated[int | None, typer.Option(envvar="THREADS", min=1, help="ncnn threads.")] = None,
    compare: Annotated[
        bool, typer.Option(help="Also time the LocalAI-equivalent path (all nets loaded per request).")
    ] = False,
    low_memory: Annotated[
        bool, typer.Option(help="Measure the low-memory setting (nets released between phases).")
    ] = False,
    quick: Annotated[bool, typer.Option(help="One 256x256 mode-1 run at 2 steps.")] = False,
    output: Annotated[
        Path | None, typer.Option(help="Directory for <timestamp>.json and .md results.")
    ] = None,
) -> None:
    """Measure load time, seconds per step and peak memory, each configuration in a fresh process."""
    target = resolve_target(model, models_path, assets, synthetic, threads, low_memory)
    plan: dict[str, Any] = {"sizes": size or [512], "modes": mode or [0], "steps": steps, "repeats": repeats}
    if quick:
        plan = dict(QUICK)
    for m in plan["modes"]:
        if m not in (0, 1):
            raise InvalidRequest(f"--mode {m} must be 0 (low memory) or 1 (winograd/sgemm, faster)")
    for s in plan["sizes"]:
        if s < 64 or s % 64:
            raise InvalidRequest(f"--size {s} must be a positive multiple of 64")
    contenders = benchmark.CONTENDERS if compare else (benchmark.OURS,)
    err = stderr_console()

    def show(r: benchmark.TrialResult) -> None:
        err.print(
            f"{r.spec.contender} {r.spec.size}x{r.spec.size} mode {r.spec.mode}: {r.step_s:.2f} s/step, "
            f"request {r.request_s:.1f} s, peak RSS {r.peak_rss_gb:.2f} GB",
            highlight=False,
        )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def on_progress(
            number: int, trials: int, spec: benchmark.TrialSpec, phase: str, step: int, steps: int
        ) -> None:
            bar.update(
                task,
                completed=step,
                total=steps,
                description=f"trial {number}/{trials}: {spec.contender} {spec.size}x{spec.size} "
                f"mode {spec.mode}, {phase}",
            )

        results = benchmark.run_benchmark(
            target, contenders=contenders, on_result=show, on_progress=on_progress, **plan
        )
    summaries = benchmark.summarize(results)
    table = benchmark.markdown_table(summaries)
    Console().print(table, highlight=False, markup=False)
    if output is not None:
        doc = benchmark.results_document(target, results, summaries)
        paths = benchmark.write_results(output, time.strftime("bench-%Y%m%d-%H%M%S"), doc, table)
        err.print("wrote " + ", ".join(str(p) for p in paths), highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``benchmark`` command."""
    app.command("benchmark")(handle_errors(benchmark_command))
