"""What every command shares: the output streams and the one error boundary.

Rich draws colour, tables and progress bars in a terminal, and costs about
50 ms to import. A run whose output is not a terminal (a script, a pipe, a
log file) gets the same lines as plain text, unwrapped, and never imports it:
``imgconv apply`` in a script starts that much faster.
"""

from __future__ import annotations

import errno
import io
import os
import re
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


class ReaderGone(Exception):
    """Standard output's reader went away (EPIPE, as in ``imgconv list | head -1``).

    Not an OSError, so that it passes Typer's own EPIPE handling (exit 1) on
    its way to :func:`imgconv.cli.main`, which ends the run quietly with 141.
    """


class OutputFailed(ImgconvError):
    """Standard output cannot take what is written (closed, a full disk, an I/O error)."""


@contextmanager
def _to_reader() -> Iterator[None]:
    try:
        yield
    except BrokenPipeError:
        raise ReaderGone from None
    except OSError as exc:
        raise OutputFailed(f"cannot write to standard output ({exc.strerror or exc})") from None


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
            with _to_reader():
                self.console.print(*objects, **options)
            return
        with _to_reader(), self.console.capture() as captured:  # Rich flushes on its way out
            self.console.print(*objects, **options)
        # the spaces before a line's end, or before the colour codes that end it (FORCE_COLOR)
        padding = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")
        lines = captured.get().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.write("".join(padding.sub(r"\1", line) + "\n" for line in lines))

    def write(self, text: str) -> None:
        """Text as it is, flushed (as Rich does: in order with stderr when both go to one log)."""
        with _to_reader():
            self.file.write(text)
            self.file.flush()

    def line(self, text: str, style: str | None = None, prefix: str = "", *,
             multiline: bool = False) -> None:
        """One line of text (never markup), not wrapped; ``prefix`` in ``style`` in a terminal.

        Control characters (a file name's escape sequences or newlines) are
        shown escaped (:func:`printable`), so a line is always one line;
        ``multiline`` keeps newlines (a traceback with --debug).
        """
        text = "\n".join(map(printable, text.split("\n"))) if multiline else printable(text)
        if self._name == "stderr":
            try:
                self._line(text, style, prefix)
            except (OSError, ValueError):  # a closed or full stderr: the run goes on without it
                sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the rest of the run)
            return
        with _to_reader():
            self._line(text, style, prefix)

    def _line(self, text: str, style: str | None, prefix: str) -> None:
        if not self.is_terminal:
            self.file.write(f"{prefix} {text}\n" if prefix else f"{text}\n")
            self.file.flush()
            return
        from rich.text import Text

        line = Text.assemble((prefix, style or ""), " ", text) if prefix else Text(text)
        self.console.print(line, soft_wrap=True)


#: Characters that would act on a terminal or break a line, and lone surrogates
#: (the undecodable bytes of a file name): shown as Python escapes
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
                          "\ud800-\udfff]")


#: The library's parameters and the command line's flags that set them: the library
#: names a parameter as `name` or `name=value` in its messages (it never knows
#: of flags), and every line printed here says ``--flag`` or ``--flag value``.
FLAGS = {
    "output": "-o", "kernel": "-k", "format": "--format",
    "pool_count_pad": "--no-pool-count-pad", **{
        name: "--" + name.replace("_", "-") for name in (
            "activation", "alpha", "bias", "chunk", "compression", "cval", "debug", "depth",
            "dilation", "dry_run", "memory_limit", "tiles",
            "gray", "jit", "jobs", "manifest", "max_pixels", "mode", "montage", "name",
            "out_dir", "output_map", "overwrite", "pad_mode", "padding", "pipeline", "pool",
            "pool_ceil", "pool_dilation", "pool_padding", "pool_size", "pool_stride",
            "quality", "quiet", "recursive", "scheduler", "scheduler_file", "scheduler_timeout",
            "skip_existing", "stride", "threads", "tol", "verify")}}
#: The flags with a --no- form, which `name=False` becomes
NEGATABLE = ("--tiles", "--jit")
_PARAMETER = re.compile("`(" + "|".join(sorted(FLAGS)) + ")(?:=([^`]*))?`")


def flag_words(text: str) -> str:
    """The library's `name=value` as the command line's ``--name value``.

    >>> flag_words("`depth=16` needs png or tiff output; `output=-` needs `format`")
    '--depth 16 needs png or tiff output; -o - needs --format'
    >>> flag_words("use `overwrite=True` to replace it")
    'use --overwrite to replace it'
    """
    def flag(match: re.Match[str]) -> str:
        option, value = FLAGS[match[1]], match[2]
        if value == "False" and option in NEGATABLE:
            return "--no-" + option[2:]
        return option if value is None or value == "True" else f"{option} {value}"

    return _PARAMETER.sub(flag, text)


def printable(text: str) -> str:
    r"""``text`` with control characters escaped, safe to show on one terminal line.

    >>> printable("a\x1b[2Jb\nc.png")
    'a\\x1b[2Jb\\nc.png'
    """
    def escape(match: re.Match[str]) -> str:
        char = match[0]
        if "\ud800" <= char <= "\udfff":  # os.fsdecode's stand-in for the byte 0x80-0xff
            return f"\\x{ord(char) - 0xDC00:02x}"
        return char.encode("unicode_escape").decode("ascii")

    return _UNPRINTABLE.sub(escape, text)


stdout = Stream("stdout")
stderr = Stream("stderr")


class StreamClosed(OSError):
    """Reading or writing a standard stream that the caller closed (``<&-``, ``>&-``)."""


class _ClosedBytes(io.RawIOBase):
    def __init__(self, name: str) -> None:
        self.name = name

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise StreamClosed(errno.EBADF, f"{self.name} is closed")

    def write(self, data: Any) -> int:
        raise StreamClosed(errno.EBADF, f"{self.name} is closed")


class _ClosedText(io.TextIOBase):
    """A closed standard stream: every read or write raises; nothing is ever buffered."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = _ClosedBytes(name)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        raise StreamClosed(errno.EBADF, f"{self.name} is closed")

    def write(self, text: str) -> int:
        raise StreamClosed(errno.EBADF, f"{self.name} is closed")


def guard_standard_streams() -> None:
    """Make closed standard streams (``<&-``, ``>&-``, ``2>&-``) safe, before any file is opened.

    Each closed descriptor 0, 1 or 2 is opened on the null device, so that no
    image or temporary file can take its number and receive what was meant for
    the terminal. Then reading a closed standard input, or writing a closed
    standard output, raises :class:`StreamClosed` (a clear error, not an empty
    image or a lost result); messages to a closed standard error are dropped.
    """
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:  # a lower descriptor was closed too: it got the null device first
            os.dup2(null, fd)
            os.close(null)
        if name == "stderr":
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the whole run)
            continue
        setattr(sys, name, _ClosedText("standard input" if fd == 0 else "standard output"))


def silence_stdout() -> None:
    """Point standard output at the null device after it failed (EPIPE, closed, full).

    What is still buffered is dropped, so Python's own flush at exit does not
    fail again and turn the exit status into 120.
    """
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115


def print_error(message: str, *, multiline: bool = False) -> None:
    """``error: <message>`` on stderr; the message is text, never Rich markup.

    A library message names parameters as `name`: this line says the flag.
    """
    stderr.line(flag_words(message), "red", "error:", multiline=multiline)


def print_warning(message: str) -> None:
    """``warning: <message>`` on stderr, as text."""
    stderr.line(flag_words(message), "yellow", "warning:")


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
