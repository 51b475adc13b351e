"""The command line: parse options, call the library, print, exit.

Each command lives in a module of its own (``apply``, ``check``, ``kernels``);
``options`` holds what ``apply`` and ``check`` share, ``output`` the streams and
the error boundary (:func:`imgconv.cli.output.report_errors`). Heavy imports (numpy, PIL, scipy)
happen inside the commands, never at start-up.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from imgconv import __version__
from imgconv.cli import apply, check, kernels
from imgconv.cli.output import (
    OutputFailed,
    ReaderGone,
    StreamClosed,
    guard_standard_streams,
    print_error,
    silence_stdout,
    stderr,
    stdout,
)
from imgconv.errors import ImgconvError

app = typer.Typer(
    name="imgconv",
    help="Filter images with convolution kernels: exact, fast and safe.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        stdout.line(f"imgconv {__version__}")
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


# Commands are registered here, one line each.
app.command("list")(kernels.list_command)
app.command("show")(kernels.show_command)
app.command("apply")(apply.apply_command)
app.command("check")(check.check_command)


def main() -> None:
    """Console-script entry point: usage errors are one ``error:`` line too, exit code 2."""
    guard_standard_streams()
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # Typer's (vendored Click's) usage errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            # Typer's rich help printed itself while the error was made; plain help did not
            if exc.format_message():
                stdout.write(exc.format_message() + "\n")
            code = 0
        else:
            command = ctx.command_path if ctx is not None else "imgconv"
            print_error(f"{exc.format_message()} (see '{command} --help')")
            code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        stderr.line("interrupted")
        code = 130
    except StreamClosed as exc:  # imgconv apply - <&-
        print_error(exc.strerror or str(exc))
        code = 1
    except ImgconvError as exc:  # one raised outside a command's report_errors
        if isinstance(exc, OutputFailed):  # imgconv list >&- (or >/dev/full)
            silence_stdout()
        print_error(str(exc))
        code = exc.exit_code
    except SystemExit as exc:
        # Rich's and Typer's own EPIPE handling (the help into `| head -1`) exit 1; the
        # reader left, which this command says with 141 wherever it happens
        if not isinstance(exc.__context__, BrokenPipeError):
            raise
        silence_stdout()
        code = 141
    except ReaderGone:  # imgconv show sobel | head -1: quiet, as if SIGPIPE had ended it
        silence_stdout()
        code = 141
    except Exception as exc:  # a bug: one line, the traceback only with --debug
        if "--debug" in sys.argv:
            raise
        print_error(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
        )
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
