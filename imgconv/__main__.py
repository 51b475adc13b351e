"""The ``imgconv`` command and ``python -m imgconv``.

This module imports nothing heavy itself, so that Ctrl-C while typer, rich or
numpy are still being imported ends the run quietly (exit 130), as it does
later, instead of with a traceback.
"""

from __future__ import annotations

import gc
import sys


def script() -> None:
    """The console script: :func:`imgconv.cli.main`, then a quick exit.

    The process ends with the run, so nothing needs collecting: frozen objects
    are left out of the garbage collector's passes while the interpreter tears
    down, which otherwise walk every object typer, Pillow and numpy made
    (80-110 ms a call). :func:`imgconv.cli.main` itself leaves the collector
    alone, for callers that go on running.
    """
    try:
        from imgconv.cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    script()
