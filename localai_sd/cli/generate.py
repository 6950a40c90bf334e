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
from localai_sd.errors import InvalidRequest, OutputError
from localai_sd.intake import RawRequest, admit_for, build_request
from localai_sd.jobs import events as job_events
from localai_sd.jobs.steps import step_listener
from localai_sd.models import load_config
from localai_sd.pipeline.img2img import EditSpec, prepare_edit
from localai_sd.pipeline.memory import resolve_budget
from localai_sd.pipeline.output import DEFAULT_COMPRESSION, format_for_path, render, write_file_atomic
from localai_sd.pipeline.request import Limits
from localai_sd.pipeline.sampler_names import sampler_rows
from localai_sd.settings import Settings, parse_memory_size


def output_paths(output: Path | None, seeds: list[int]) -> list[Path]:
    """One path per image: ``{seed}`` in the name is filled in; several images get ``-<seed>`` added."""
    if output is None:
        return [Path(f"sd-{seed}.png") for seed in seeds]
    # The extension picks the format (.png, .jpg/.jpeg, .webp); several images share it.
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
    size: Annotated[
        str | None,
        typer.Option(
            help="WIDTHxHEIGHT, both multiples of 64, or auto [default: the model's, else 512x512; "
            "with --image, the image's size fitted to 1024]"
        ),
    ] = None,
    step: Annotated[
        int | None, typer.Option("--step", "--steps", help="Sampling steps (default 15).")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="auto: fast convolutions when --max-memory allows them at this size; 0: plain (least "
            "memory); 1 (any positive number): winograd/sgemm (faster) [default: the model's, else auto]"
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="0 … 2**32-1; random when omitted or -1 (the seed used is printed).")
    ] = None,
    negative_prompt: Annotated[
        str | None, typer.Option("--negative-prompt", help="Negative prompt (joined to any text after '|').")
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            help="euler_a, dpmpp_2m, ... or A1111/sd.cpp names ('Euler a', 'DPM++ 2M Karras'); 'list' lists them."
        ),
    ] = None,
    schedule: Annotated[
        str | None, typer.Option(help="default (the reference's), karras or exponential.")
    ] = None,
    cfg_scale: Annotated[
        float | None, typer.Option(help="Classifier-free guidance scale [default: the model's, else 7.5].")
    ] = None,
    n: Annotated[int | None, typer.Option(help="Number of images; they use seed, seed+1, ...")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Image path: .png, .jpg/.jpeg or .webp (parameters in EXIF); '{seed}' is replaced by the seed.",
        ),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option("--image", help="Edit this image (PNG, JPEG, WebP): img2img, or inpainting."),
    ] = None,
    strength: Annotated[
        float | None,
        typer.Option(
            help="How much of the image is redrawn, (0, 1] [default 0.75; 1.0 for a transparent hole]."
        ),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask", help="Inpainting mask: transparent (alpha < 128) or white pixels are repainted."
        ),
    ] = None,
    mask_blur: Annotated[
        float | None, typer.Option("--mask-blur", help="Feather of the pasted-back edge, pixels [default 4].")
    ] = None,
    inpaint_only_masked: Annotated[
        bool,
        typer.Option("--inpaint-only-masked", help="Process only the mask's box (plus --padding): faster."),
    ] = False,
    padding: Annotated[
        int | None, typer.Option(help="Pixels around the mask's box for --inpaint-only-masked [default 32].")
    ] = None,
    mask_invert: Annotated[
        bool, typer.Option("--mask-invert", help="Repaint the other side of the mask.")
    ] = False,
    guidance_interval: Annotated[
        str | None,
        typer.Option(help="LO,HI: guidance only at sigmas in (LO, HI], e.g. 0.28,5.42 (fewer UNet runs)."),
    ] = None,
    s_min_uncond: Annotated[
        float | None,
        typer.Option("--s-min-uncond", help="A1111's NGMS: skip the uncond pass below this sigma."),
    ] = None,
    s_min_uncond_all: Annotated[
        bool,
        typer.Option("--s-min-uncond-all", help="With --s-min-uncond: skip it at every step, not alternate."),
    ] = False,
    deepcache_interval: Annotated[
        int | None,
        typer.Option("--deepcache-interval", help="DeepCache: a full UNet every N steps (1 is off)."),
    ] = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            envvar="MAX_MEMORY",
            help="Refuse a request estimated to need more memory, e.g. 12G; auto mode picks by it [default: 85% of RAM]",
        ),
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
    """Generate images from a prompt (or edit --image) and write them as PNG, JPEG or WebP files."""
    from localai_sd.cli.gallery import ensure_model, run_preload
    from localai_sd.pipeline.pipeline import StableDiffusion

    if sampler is not None and sampler.strip().lower() == "list":
        print_samplers()
        return
    console = stderr_console()
    settings = Settings.from_env(
        models_path=models_path,
        threads=threads,
        low_memory=low_memory or None,
        preload_models=preload_models,
        preload_models_config=preload_models_config,
        max_memory_bytes=parse_memory_size(max_memory, "--max-memory") if max_memory else None,
    )
    edit = read_edit(image, mask, strength, mask_blur, inpaint_only_masked, padding, mask_invert)
    raw = RawRequest(
        prompt,
        negative_prompt=negative_prompt,
        size=size,
        step=step,
        mode=mode,
        seed=seed,
        sampler=sampler,
        schedule=schedule,
        cfg_scale=cfg_scale,
        n=n,
        guidance_interval=parse_pair(guidance_interval, "guidance_interval"),
        s_min_uncond=s_min_uncond,
        s_min_uncond_all=s_min_uncond_all,
        deepcache_interval=deepcache_interval,
    )
    run_preload(settings, console)
    ensure_model(settings, model, console)
    config = load_config(settings.models_path, model)
    request = build_request(
        raw,
        config=config,
        limits=Limits.from_settings(settings),
        default_mode=settings.default_mode,
        image_size=None if edit is None else edit.image.size,
    )
    notes = () if edit is None else prepare_edit(edit, request.width, request.height).warnings
    request = admit_for(
        request,
        resolve_budget(settings.max_memory_bytes),
        low_memory=settings.low_memory,
        threads=settings.threads,
        backend=config.backend,
    )
    paths = output_paths(output, request.seeds)
    check_writable(paths)
    if request.seed_was_random:
        console.print(f"seed: {request.seed} (random)")
    console.print(f"mode: {request.mode_label}, size: {request.size}")
    for note in notes:
        console.print(f"[yellow]warning:[/yellow] {note}")

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

        def render(event: job_events.Event, done: int) -> None:
            """Show a job ``progress`` event on the bar."""
            if isinstance(event, job_events.Progress):
                total = event.images * event.steps
                description = f"image {event.image}/{event.images}"
                progress.update(task, completed=done, total=total, description=description)

        images = sd.generate(request, on_step=step_listener(render), edit=edit)
    extras: dict[str, object] = {"Mode": request.mode_label}
    for result, path in zip(images, paths, strict=True):
        write_file_atomic(path, encode_output(result.png, path, extras))
        typer.echo(f"{path} (seed {result.seed})")


def encode_output(png: bytes, path: Path, extras: dict[str, object]) -> bytes:
    """The image in the format ``path``'s extension names, with ``extras`` in its parameters."""
    return render(png, format_for_path(path), DEFAULT_COMPRESSION, extras)


def parse_pair(text: str | None, param: str) -> list[float] | None:
    """``LO,HI`` as two floats; InvalidRequest naming ``param`` otherwise."""
    if text is None:
        return None
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise InvalidRequest(
            f"{param} {text!r} must be two numbers LO,HI such as 0.28,5.42", param=param
        ) from None
    return [lo, hi]


def read_edit(
    image: Path | None,
    mask: Path | None,
    strength: float | None,
    mask_blur: float | None,
    inpaint_only_masked: bool,
    padding: int | None,
    mask_invert: bool,
) -> EditSpec | None:
    """The edit the image flags ask for (decoded and checked now), or None for txt2img."""
    if image is None:
        if mask is not None or strength is not None:
            what = "--mask" if mask is not None else "--strength"
            raise InvalidRequest(f"{what} needs --image: the picture to edit", param="image")
        return None
    settings: dict[str, object] = {"inpaint_only_masked": inpaint_only_masked, "mask_invert": mask_invert}
    if mask_blur is not None:
        settings["mask_blur"] = mask_blur
    if padding is not None:
        settings["padding"] = padding
    return EditSpec.from_bytes(
        read_input(image), None if mask is None else read_input(mask), strength=strength, **settings
    )


def read_input(path: Path) -> bytes:
    """An input file's bytes; a missing or unreadable file is an InvalidRequest naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}", param="image") from None


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
