"""``local-ai generate``: prompt in, PNG files out, with a progress bar over the sampling steps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from localai_sd.cli.app import handle_errors, stderr_console
from localai_sd.errors import OutputError
from localai_sd.models import load_config
from localai_sd.pipeline.output import write_file_atomic
from localai_sd.pipeline.request import GenerationRequest
from localai_sd.pipeline.sampler_names import resolve_sampler, resolve_schedule, sampler_rows
from localai_sd.settings import Settings

#: A1111, sd.cpp and LocalAI spell "a random seed" as -1.
RANDOM_SEED = -1


def output_paths(output: Path | None, seeds: list[int]) -> list[Path]:
    """One path per image: ``{seed}`` in the name is filled in; several images get ``-<seed>`` added."""
    if output is None:
        return [Path(f"sd-{seed}.png") for seed in seeds]
    if "{seed}" in output.name:
        return [output.with_name(output.name.replace("{seed}", str(seed))) for seed in seeds]
    if len(seeds) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{seed}{output.suffix or '.png'}") for seed in seeds]


def check_writable(paths: list[Path]) -> None:
    """Fail before generating if an output file could not be written."""
    for path in paths:
        directory = path.parent if str(path.parent) else Path(".")
        if path.is_dir():
            raise OutputError(f"output {path} is a directory; give a file name such as {path / 'image.png'}")
        if not directory.is_dir():
            raise OutputError(f"output directory {directory} does not exist")
        if not os.access(directory, os.W_OK):
            raise OutputError(f"output directory {directory} is not writable")


def generate(
    prompt: Annotated[
        str, typer.Argument(help="The prompt; text after the first '|' is the negative prompt.")
    ],
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT, both multiples of 64.")] = "512x512",
    step: Annotated[
        int | None, typer.Option("--step", "--steps", help="Sampling steps (default 15).")
    ] = None,
    mode: Annotated[int, typer.Option(help="0: low memory; 1: winograd/sgemm convolutions (faster).")] = 0,
    seed: Annotated[
        int | None, typer.Option(help="0 … 2**32-1; random when omitted or -1 (the seed used is printed).")
    ] = None,
    negative_prompt: Annotated[
        str | None, typer.Option("--negative-prompt", help="Negative prompt (joined to any text after '|').")
    ] = None,
    sampler: Annotated[
        str,
        typer.Option(
            help="euler_a, dpmpp_2m, ... or A1111/sd.cpp names ('Euler a', 'DPM++ 2M Karras'); 'list' lists them."
        ),
    ] = "euler_a",
    schedule: Annotated[
        str | None, typer.Option(help="default (the reference's), karras or exponential.")
    ] = None,
    cfg_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.5,
    n: Annotated[int, typer.Option(help="Number of images; they use seed, seed+1, ...")] = 1,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="PNG path; '{seed}' is replaced by the seed.")
    ] = None,
    model: Annotated[str, typer.Option(help="Model name: <models-path>/<model>.yaml.")] = "stablediffusion",
    models_path: Annotated[Path, typer.Option(envvar="MODELS_PATH", help="Where models live.")] = Path(
        "models"
    ),
    threads: Annotated[int | None, typer.Option(envvar="THREADS", min=1, help="ncnn threads.")] = None,
    low_memory: Annotated[
        bool, typer.Option("--low-memory", envvar="LOW_MEMORY", help="Less peak memory, slower decode.")
    ] = False,
    preload_models: Annotated[
        str | None, typer.Option(envvar="PRELOAD_MODELS", help="JSON list of install requests to run first.")
    ] = None,
    preload_models_config: Annotated[
        Path | None, typer.Option(envvar="PRELOAD_MODELS_CONFIG", help="YAML/JSON file of install requests.")
    ] = None,
) -> None:
    """Generate images from a prompt and write them as PNG files."""
    from localai_sd.cli.gallery import ensure_model, run_preload
    from localai_sd.pipeline.pipeline import StableDiffusion

    if sampler.strip().lower() == "list":
        print_samplers()
        return
    console = stderr_console()
    choice = resolve_sampler(sampler)
    settings = Settings.from_env(
        models_path=models_path,
        threads=threads,
        low_memory=low_memory or None,
        preload_models=preload_models,
        preload_models_config=preload_models_config,
    )
    run_preload(settings, console)
    ensure_model(settings, model, console)
    config = load_config(settings.models_path, model)
    request = GenerationRequest.create(
        prompt,
        negative_prompt=negative_prompt,
        size=size,
        steps=step if step is not None else config.step,
        mode=mode,
        seed=None if seed == RANDOM_SEED else seed,
        sampler=choice.sampler,
        schedule=resolve_schedule(schedule) if schedule is not None else choice.schedule,
        cfg_scale=cfg_scale,
        n=n,
    )
    paths = output_paths(output, request.seeds)
    check_writable(paths)
    if request.seed_was_random:
        console.print(f"seed: {request.seed} (random)")

    with console.status(f"loading model {model!r}…"):
        sd = StableDiffusion.load(
            config,
            threads=settings.threads,
            low_memory=settings.low_memory,
            max_prompt_chunks=settings.max_prompt_chunks,
        )
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("sampling", total=request.n * request.steps)

        def on_step(event) -> None:
            progress.update(
                task,
                completed=event.index * event.steps + event.step,
                total=request.n * event.steps,
                description=f"image {event.index + 1}/{event.n}",
            )

        images = sd.generate(request, on_step=on_step)
    for image, path in zip(images, paths, strict=True):
        write_file_atomic(path, image.png)
        typer.echo(f"{path} (seed {image.seed})")


def print_samplers() -> None:
    """Print each sampler with its A1111 and sd.cpp names."""
    table = Table(
        "sampler",
        "A1111 name",
        "sd.cpp name",
        caption="An A1111 name + Karras/Exponential sets the schedule too.",
    )
    for row in sampler_rows():
        table.add_row(*row)
    Console().print(table)


def samplers() -> None:
    """List the samplers and the names from A1111 and sd.cpp that select them."""
    print_samplers()


def register(app: typer.Typer) -> None:
    """Add the ``generate`` command, its Ollama-style alias ``run``, and ``samplers``."""
    app.command("generate")(handle_errors(generate))
    app.command("run", help="Alias of generate (Ollama's verb).")(handle_errors(generate))
    app.command("samplers")(handle_errors(samplers))
