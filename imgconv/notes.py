"""A file's warnings as its notes: one line each, not a Python warning on stderr.

What the CLI prints as one-line warnings of a file (and its quiet option
silences) comes from here: Pillow's "Corrupt EXIF", numpy's RuntimeWarnings
from a float image's NaN, and the same from a decoding thread or from the
threads of a tiled run's chunk pool. Imports no numpy: the prefetch thread
(:mod:`imgconv.prefetch`) uses it before numpy is loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from imgconv.errors import ImgconvWarning

#: Libraries whose log records (tifffile's "invalid page offset", say) become warnings,
#: so notes, rather than bare lines on stderr from logging's last-resort handler
LOGGERS = ("tifffile",)


_routing = threading.Lock()
_routed: list[Any] = []  # (the handler, and each logger's propagate as found) while routed
_depth = 0


@contextmanager
def _logs_as_warnings() -> Iterator[None]:
    """While the outermost such block lasts, :data:`LOGGERS`' records become UserWarnings.

    Only then: a program that imports imgconv keeps its own logging of those
    libraries the rest of the time. The loggers need not be imported yet.
    """
    global _depth
    import logging

    with _routing:
        _depth += 1
        if _depth == 1:
            import re
            import warnings

            class AsWarnings(logging.Handler):
                def emit(self, record: logging.LogRecord) -> None:
                    # (tifffile starts with the object it read: "<tifffile.TiffPages @8>")
                    message = re.sub(r"^<[\w.]+ @\d+>\s*", "", record.getMessage())
                    warnings.warn(f"{record.name}: {message}", UserWarning, stacklevel=2)

            handler = AsWarnings(logging.WARNING)
            _routed[:] = [handler]
            for name in LOGGERS:
                logger = logging.getLogger(name)
                _routed.append(logger.propagate)
                logger.addHandler(handler)
                logger.propagate = False
    try:
        yield
    finally:
        with _routing:
            _depth -= 1
            if _depth == 0:
                handler, *propagate = _routed
                for name, was in zip(LOGGERS, propagate, strict=True):
                    logger = logging.getLogger(name)
                    logger.removeHandler(handler)
                    logger.propagate = was
                _routed.clear()


@contextmanager
def warnings_as_notes(name: str, notes: list[str]) -> Iterator[None]:
    """Turn what the block warns (Pillow's "Corrupt EXIF", numpy's RuntimeWarnings) into notes.

    One note ``"NAME: message"`` per distinct message, appended to ``notes``
    (which the CLI prints as one-line warnings, and the CLI's quiet option
    silences) instead of a Python warning with its source line on stderr.
    Developers' warnings (ResourceWarning, DeprecationWarning) and an
    :class:`~imgconv.errors.ImgconvWarning` go on as usual. For the main
    thread; a decoding thread uses :func:`thread_warnings_as_notes`.
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught, _logs_as_warnings():
        warnings.simplefilter("always")
        try:
            yield
        finally:
            others = _to_notes(caught, name, notes)
    for warning in others:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)


def _to_notes(caught: list[Any], name: str, notes: list[str]) -> list[Any]:
    """Add the users' warnings of ``caught`` to ``notes``; the others, to pass on."""
    others = []
    for warning in caught:
        if (not issubclass(warning.category, (UserWarning, RuntimeWarning))
                or issubclass(warning.category, ImgconvWarning)):
            others.append(warning)
            continue
        note = f"{name}: {str(warning.message).strip()}"
        if note not in notes:
            notes.append(note)
    return others


#: Warnings shown while a thread is in :func:`thread_warnings_as_notes`, by thread
_sinks: dict[int, list[Any]] = {}


def _dispatch(message: Any, category: type[Warning], filename: str, lineno: int,
              file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` while decoding threads run: theirs to their sinks."""
    import warnings

    sink = _sinks.get(threading.get_ident())
    if sink is None:
        _dispatch.previous(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]
    else:
        sink.append(warnings.WarningMessage(message, category, filename, lineno, file, line))


def _install_dispatch() -> None:
    """Make :func:`_dispatch` ``warnings.showwarning``, keeping what it replaces."""
    import warnings

    if warnings.showwarning is not _dispatch:
        _dispatch.previous = warnings.showwarning  # type: ignore[attr-defined]
        warnings.showwarning = _dispatch


def _pass_on(caught: list[Any], name: str, notes: list[str]) -> None:
    """The users' warnings of ``caught`` into ``notes``; the others issued again."""
    import warnings

    for warning in _to_notes(caught, name, notes):
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)


@contextmanager
def thread_warnings_as_notes(name: str, notes: list[str]) -> Iterator[None]:
    """:func:`warnings_as_notes` for a thread other than the main one.

    ``warnings.catch_warnings`` swaps process-wide state, which the main
    thread's own blocks (the CLI's, a file's) would then lose or restore in
    the wrong order. Here only ``warnings.showwarning`` is wrapped, once, by a
    function that hands this thread's warnings to its own list and every other
    thread's to what was there before; nothing is restored. (Python's filters
    still apply: a warning shown once per place is noted once per process.)
    """
    _install_dispatch()
    caught: list[Any] = []
    _sinks[threading.get_ident()] = caught
    try:
        yield
    finally:
        del _sinks[threading.get_ident()]
        _pass_on(caught, name, notes)


@contextmanager
def pool_warnings_as_notes(name: str, notes: list[str], threads: int) -> Iterator[Any]:
    """A thread pool (for dask's ``pool`` setting) whose threads' warnings become ``notes``,
    as :func:`thread_warnings_as_notes` does for one thread; the pool ends with the block."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    # put back as found: inside a catch_warnings block showwarning is a stand-in, which
    # must not become what _dispatch passes other threads' warnings to afterwards
    saved = warnings.showwarning, getattr(_dispatch, "previous", None)
    _install_dispatch()
    caught: list[Any] = []
    idents: list[int] = []

    def register() -> None:
        idents.append(threading.get_ident())
        _sinks[idents[-1]] = caught

    pool = ThreadPoolExecutor(threads, thread_name_prefix="imgconv-chunk", initializer=register)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for ident in idents:
            _sinks.pop(ident, None)
        warnings.showwarning = saved[0]
        if saved[1] is not None:
            _dispatch.previous = saved[1]  # type: ignore[attr-defined]
        _pass_on(caught, name, notes)
