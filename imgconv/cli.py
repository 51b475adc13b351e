"""The command line: parse options, call the library, print, exit.

Every command reports :class:`~imgconv.errors.ImgconvError` through
:func:`report_errors`, the one place that turns an error into an
``error: ...`` line and an exit code. Heavy imports (numpy, PIL, scipy)
happen inside the commands, never at start-up.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from imgconv import __version__
from imgconv.errors import ImgconvError

app = typer.Typer(
    name="imgconv",
    help="Filter images with convolution kernels: exact, fast and safe.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


@contextmanager
def report_errors(debug: bool = False) -> Iterator[None]:
    """Turn an ImgconvError into one ``error:`` line and its exit code (re-raise with --debug)."""
    try:
        yield
    except ImgconvError as exc:
        if debug:
            raise
        stderr.print(f"[red]error:[/red] {exc}", soft_wrap=True, markup=True)
        raise typer.Exit(exc.exit_code) from None


def _version(value: bool) -> None:
    if value:
        stdout.print(f"imgconv {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Filter images with convolution kernels: exact, fast and safe."""


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
