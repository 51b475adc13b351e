"""What every command shares: the output streams and the one error boundary.

Rich draws colour, tables and progress bars in a terminal, and costs about
50 ms to import. A run whose output is not a terminal (a script, a pipe, a
log file) gets the same lines as plain text, unwrapped, and never imports it:
``imgconv apply`` in a script starts that much faster.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

import typer

from imgconv.errors import ImgconvError, ImgconvWarning

if TYPE_CHECKING:
    from rich.console import Console

#: Variables by which Rich decides for itself whether it writes to a terminal.
RICH_TERMINAL_VARIABLES = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


class Stream:
    """Standard output or error: plain lines, or a Rich console made on first use.

    ``file`` is looked up at each write, so a redirected ``sys.stdout`` (as in
    a test's CliRunner) is followed.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._console: Console | None = None

    @property
    def file(self) -> TextIO:
        stream: TextIO = getattr(sys, self._name)
        return stream

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # Outside a terminal nothing is wrapped to an assumed 80 columns: a
            # table is as wide as its cells (a long path stays on one line)
            width = None if self.file_is_terminal() else 100_000
            self._console = Console(stderr=self._name == "stderr", highlight=False,
                                    width=width)
        return self._console

    def file_is_terminal(self) -> bool:
        try:
            return self.file.isatty()
        except (AttributeError, ValueError):
            return False

    @property
    def is_terminal(self) -> bool:
        """Whether this stream is a terminal, as Rich would decide."""
        if any(name in os.environ for name in RICH_TERMINAL_VARIABLES):  # even if empty
            return self.console.is_terminal
        return self.file_is_terminal()

    def print(self, *objects: Any, **options: Any) -> None:
        """Rich's ``Console.print``: for tables and styled text.

        Outside a terminal, without the padding Rich adds at the ends of lines.
        """
        if self.file_is_terminal():
            self.console.print(*objects, **options)
            return
        import re

        with self.console.capture() as captured:
            self.console.print(*objects, **options)
        # the spaces before a line's end, or before the colour codes that end it (FORCE_COLOR)
        padding = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")
        lines = captured.get().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.file.write("".join(padding.sub(r"\1", line) + "\n" for line in lines))
        self.file.flush()  # as Rich does: in order with stderr when both go to one log

    def line(self, text: str, style: str | None = None, prefix: str = "") -> None:
        """One line of text (never markup), not wrapped; ``prefix`` in ``style`` in a terminal."""
        if not self.is_terminal:
            self.file.write(f"{prefix} {text}\n" if prefix else f"{text}\n")
            self.file.flush()
            return
        from rich.text import Text

        line = Text.assemble((prefix, style or ""), " ", text) if prefix else Text(text)
        self.console.print(line, soft_wrap=True)


stdout = Stream("stdout")
stderr = Stream("stderr")


def print_error(message: str) -> None:
    """``error: <message>`` on stderr; the message is text, never Rich markup."""
    stderr.line(message, "red", "error:")


def print_warning(message: str) -> None:
    """``warning: <message>`` on stderr, as text."""
    stderr.line(message, "yellow", "warning:")


@contextmanager
def report_errors(debug: bool = False) -> Iterator[None]:
    """Turn an ImgconvError into one ``error: ...`` line and its exit code.

    With ``debug`` the exception propagates, so the traceback is shown. An
    :class:`~imgconv.errors.ImgconvWarning` is one ``warning: ...`` line, once.
    """
    shown: set[str] = set()
    default_show = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any,
             **kwargs: Any) -> None:
        if not issubclass(category, ImgconvWarning):
            default_show(message, category, *args, **kwargs)
        elif str(message) not in shown:
            shown.add(str(message))
            print_warning(str(message))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ImgconvWarning)
            warnings.showwarning = show
            yield
    except ImgconvError as exc:
        if debug:
            raise
        print_error(str(exc))
        raise typer.Exit(exc.exit_code) from None
