"""What every command shares: the consoles and the one error boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from imgconv.errors import ImgconvError

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


@contextmanager
def report_errors(debug: bool = False) -> Iterator[None]:
    """Turn an ImgconvError into one ``error: ...`` line and its exit code.

    With ``debug`` the exception propagates, so the traceback is shown.
    """
    try:
        yield
    except ImgconvError as exc:
        if debug:
            raise
        stderr.print(f"[red]error:[/red] {exc}", soft_wrap=True, markup=True)
        raise typer.Exit(exc.exit_code) from None
