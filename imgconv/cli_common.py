"""What every command shares: the consoles and the one error boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.text import Text

from imgconv.errors import ImgconvError

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def print_error(message: str) -> None:
    """``error: <message>`` on stderr; the message is text, never Rich markup."""
    stderr.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)


def print_warning(message: str) -> None:
    """``warning: <message>`` on stderr, as text."""
    stderr.print(Text.assemble(("warning:", "yellow"), " ", message), soft_wrap=True)


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
        print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
