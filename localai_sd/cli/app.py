"""The ``local-ai`` Typer app: commands register here; library errors become one line and exit 1."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from localai_sd.errors import LocalAISDError

F = TypeVar("F", bound=Callable[..., Any])

#: Exit code for a library error (bad input, missing model, failed download, ...).
EXIT_ERROR = 1
#: Exit code for Ctrl-C, as shells use for SIGINT.
EXIT_INTERRUPTED = 130


def stderr_console() -> Console:
    """A console on stderr, for messages and progress bars."""
    return Console(stderr=True)


def handle_errors(func: F) -> F:
    """Run a command; print a library error as one line on stderr and exit non-zero."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LocalAISDError as err:
            stderr_console().print(f"[bold red]error:[/] {err}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            stderr_console().print("[yellow]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def version_text() -> str:
    """``local-ai <version>`` from the installed package metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"local-ai {version('localai-sd')}"
    except PackageNotFoundError:
        return "local-ai (version unknown: the package is not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Stable Diffusion on the CPU through ncnn: LocalAI-compatible CLI and OpenAI-compatible server."""


def build_app() -> typer.Typer:
    """Build the ``local-ai`` app with every command registered."""
    from localai_sd.cli import benchmark, gallery, generate, serve, worker

    app = typer.Typer(
        name="local-ai",
        help="Stable Diffusion on the CPU through ncnn: LocalAI-compatible CLI and OpenAI-compatible server.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.callback()(_root)
    for module in (generate, gallery, serve, worker, benchmark):
        module.register(app)
    return app


def main() -> None:
    """Console-script entry point."""
    build_app()()
