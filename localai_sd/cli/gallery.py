"""``local-ai install`` and ``local-ai models list|available|delete``, plus preload and auto-install helpers.

Options read LocalAI's env vars (``MODELS_PATH``, ``GALLERIES``, ``LOCALAI_MIRRORS``) through
``Settings.from_env``. Downloads draw one rich progress bar per file with size, rate and ETA.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from localai_sd.cli.app import handle_errors, stderr_console
from localai_sd.errors import GalleryError, GalleryUnreachable
from localai_sd.gallery.catalog import available_models, shown_by_default
from localai_sd.gallery.definitions import GalleryEntry
from localai_sd.gallery.download import PHASE_DONE, PHASE_FAILED, PHASE_SKIPPED, DownloadProgress
from localai_sd.gallery.install import InstallRequest, install_model, validate_request
from localai_sd.gallery.preload import preload, preload_items
from localai_sd.gallery.store import delete_model, is_installed, models_root, partial_installs
from localai_sd.gallery.streams import human_bytes
from localai_sd.gallery.urls import looks_like_url, resolve_url
from localai_sd.models import config_path, list_models
from localai_sd.settings import Settings, parse_galleries

ModelsPathOption = Annotated[
    Path | None,
    typer.Option("--models-path", envvar="MODELS_PATH", help="Where models live (default ./models)."),
]
GalleriesOption = Annotated[
    str | None,
    typer.Option(
        "--galleries", envvar="GALLERIES", help='Gallery list as JSON: [{"name": ..., "url": ...}].'
    ),
]


#: Bar suffixes per progress phase.
PHASE_LABELS = {
    PHASE_SKIPPED: " [dim]cached[/]",
    PHASE_FAILED: " [red]failed[/]",
    PHASE_DONE: " [green]ok[/]",
}


class ProgressBars:
    """Rich progress bars, one per (model, file), fed by DownloadProgress events."""

    def __init__(self, console: Console):
        """Prepare (not start) the bars on ``console``."""
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[tuple[str, str], TaskID] = {}

    def __enter__(self) -> ProgressBars:
        """Start drawing."""
        self.progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop drawing, leaving the final bars on screen."""
        self.progress.stop()

    def update(self, event: DownloadProgress) -> None:
        """Create or advance the bar of the event's file."""
        key = (event.model, event.filename)
        label = f"[{event.index}/{event.count}] {Path(event.filename).name}"
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(label, total=event.total)
        task = self.tasks[key]
        label += PHASE_LABELS.get(event.phase, "")
        self.progress.update(task, description=label, completed=event.done, total=event.total)


def build_settings(models_path: Path | None, galleries: str | None) -> Settings:
    """Settings from the environment, with the command-line options on top."""
    return Settings.from_env(
        models_path=models_path, galleries=parse_galleries(galleries) if galleries else None
    )


def request_for(url_or_id: str, name: str | None) -> InstallRequest:
    """An install request: a URL/path goes to ``url``, anything else (``gallery@name``, ``name``) to ``id``."""
    key = "url" if looks_like_url(url_or_id) else "id"
    return InstallRequest.from_dict({key: url_or_id, "name": name})


def install_with_bars(request: InstallRequest, settings: Settings, console: Console) -> str:
    """Install one request with progress bars; return the installed model name."""
    with ProgressBars(console) as bars:
        result = install_model(request, settings, progress=bars.update)
    fetched = len(result.downloaded)
    console.print(
        f"installed [bold]{result.name}[/] ({fetched} file(s) downloaded, "
        f"{len(result.files) - fetched} already present) -> {result.config_path}"
    )
    return result.name


def install(
    url_or_id: Annotated[
        str,
        typer.Argument(
            metavar="URL_OR_ID",
            help="github:owner/repo/file.yaml[@branch], huggingface://, http(s)://, file://, a local path, "
            "or a gallery id (gallery@name or name).",
        ),
    ],
    name: Annotated[str | None, typer.Option("--name", help="Install under this model name.")] = None,
    models_path: ModelsPathOption = None,
    galleries: GalleriesOption = None,
) -> None:
    """Install a model from a gallery URL or id; re-running only fetches what is missing or corrupt."""
    settings = build_settings(models_path, galleries)
    request = request_for(url_or_id, name)
    validate_request(request, settings)
    installed = install_with_bars(request, settings, stderr_console())
    typer.echo(installed)


AllOption = Annotated[
    bool, typer.Option("--all", help="Also list what this tool cannot run or did not finish.")
]


def models_list(models_path: ModelsPathOption = None, all_: AllOption = False) -> None:
    """List installed models (one name per line); ``--all`` adds failed installs' kept files."""
    settings = build_settings(models_path, None)
    models = models_root(settings)
    for name in list_models(models):
        typer.echo(name)
    if all_:
        for partial in partial_installs(models):
            typer.echo(
                f"{partial.name}  incomplete, {human_bytes(partial.size)} in {len(partial.files)} file(s) "
                f"(resume: local-ai install {partial.source} --name {partial.name}; "
                f"remove: local-ai models delete {partial.name})"
            )


def models_available(
    models_path: ModelsPathOption = None, galleries: GalleriesOption = None, all_: AllOption = False
) -> None:
    """List the gallery's image models and whether each is installed; ``--all`` lists every entry."""
    settings = build_settings(models_path, galleries)
    entries = available_models(settings, all_backends=True)
    shown = [e for e in entries if all_ or shown_by_default(e)]
    table = Table("id", "backend", "installed", "license", "description")
    for entry in shown:
        table.add_row(
            entry.id,
            backend_label(entry),
            "yes" if entry.installed else "no",
            entry.license,
            entry.description.strip(),
        )
    Console(width=200).print(table)
    if hidden := len(entries) - len(shown):
        stderr_console().print(
            f"{hidden} entries of other backends (not image models) hidden; --all lists them"
        )


def backend_label(entry: GalleryEntry) -> str:
    """The entry's backend, marked when this tool cannot run it."""
    if entry.backend is None:
        return "?"
    if shown_by_default(entry):
        return entry.backend
    return f"{entry.backend or 'none'} (unsupported)"


def models_delete(
    name: Annotated[str, typer.Argument(help="Installed model name.")], models_path: ModelsPathOption = None
) -> None:
    """Delete an installed model: its config and the files its install wrote (unless another model uses them)."""
    settings = build_settings(models_path, None)
    removed = delete_model(settings, name)
    typer.echo(f"deleted {name} ({len(removed)} file(s) removed)")


def run_preload(settings: Settings, console: Console) -> None:
    """Install the ``--preload-models``/``--preload-models-config`` entries with progress; raise listing every failure."""
    if not preload_items(settings):
        return
    with ProgressBars(console) as bars:
        results = preload(settings, progress=bars.update)
    for result in results:
        console.print(f"preloaded [bold]{result.name}[/]")


def ensure_model(settings: Settings, name: str, console: Console) -> None:
    """Install the DEFAULT model from the configured galleries if it is missing (like ``ollama run``).

    Other missing names are left to ``models.load_config``, which reports them as not found.
    """
    config_path(models_root(settings), name)  # an unsafe name fails here, before any network
    if name != settings.default_model or is_installed(models_root(settings), name):
        return
    console.print(f"model [bold]{name}[/] is not installed; installing it from the gallery…")
    try:
        install_with_bars(InstallRequest(id=name), settings, console)
    except GalleryUnreachable as err:
        raise GalleryUnreachable(unreachable_message(settings, name, err)) from None
    except GalleryError as err:
        raise GalleryError(
            f"model {name!r} is not installed in {models_root(settings)} and installing it from the gallery "
            f"({gallery_urls(settings)}) failed: {err}. Install it with: local-ai install {name} "
            f"--models-path {settings.models_path}"
        ) from None


def gallery_urls(settings: Settings) -> str:
    """``name (url), ...`` of the configured galleries, with the mirror used for each."""
    parts = []
    for gallery in settings.galleries:
        try:
            mirrored = str(resolve_url(gallery.url, settings.mirrors))
        except GalleryError:
            mirrored = gallery.url
        via = f" via {mirrored}" if mirrored != gallery.url else ""
        parts.append(f"{gallery.name} ({gallery.url}{via})")
    return ", ".join(parts) or "none configured"


def unreachable_message(settings: Settings, name: str, err: GalleryError) -> str:
    """Why the default model could not be installed (no network), and the two ways out."""
    return (
        f"model {name!r} is not installed in {models_root(settings)}, and the model gallery "
        f"{gallery_urls(settings)} is unreachable ({err}). Either set LOCALAI_MIRRORS to a reachable copy "
        "(e.g. LOCALAI_MIRRORS='https://raw.githubusercontent.com/=https://mirror.example/raw/'), "
        f"or install from local files: local-ai install file:///path/to/{name}.yaml "
        f"--models-path {settings.models_path} (or point GALLERIES at a local index.yaml)"
    )


def register(app: typer.Typer) -> None:
    """Add ``install`` and the ``models`` sub-commands."""
    app.command("install")(handle_errors(install))
    models = typer.Typer(help="Installed and available models.", no_args_is_help=True)
    models.command("install", help="Same as local-ai install.")(handle_errors(install))
    models.command("list")(handle_errors(models_list))
    models.command("available")(handle_errors(models_available))
    models.command("delete")(handle_errors(models_delete))
    app.add_typer(models, name="models")
