"""One input filtered into its output (:func:`process`), never raising for a bad file.

Also the temporary files that a killed writer leaves, and their removal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgconv.batch.tasks import STDIO, Options, Result, Status, Task, file_id
from imgconv.batch.tiled import process_tiled, wants_tiles
from imgconv.errors import ImageError, ImgconvError
from imgconv.imageio import (
    ALREADY_EXISTS,
    Picture,
    array_depth,
    check_replaceable,
    encode,
    load,
    write_atomic,
    zarr_node,
)
from imgconv.notes import warnings_as_notes
from imgconv.opening import check_regular
from imgconv.pipeline import Pipeline
from imgconv.pipeline.render import render

if TYPE_CHECKING:
    from imgconv.prefetch import Prefetch

def _sha256(path: str, data: bytes | None = None) -> str:
    """The sha256 of ``data``, or else of the file: for the manifest.

    hashlib loads OpenSSL (3 MiB of memory), so only runs that ask for it import it.
    """
    import hashlib

    if data is not None:
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    if os.path.isdir(path) and not os.path.islink(path):  # a .zarr store: its files, in order
        for top, _, files in sorted(os.walk(path)):
            for file in sorted(files):
                name = os.path.join(top, file)
                digest.update(os.path.relpath(name, path).encode("utf-8", "surrogateescape"))
                check_regular(name)  # (as the store's reader has, by now)
                _hash_file(digest, name)
        return digest.hexdigest()
    check_regular(path)  # a FIFO would block the open below
    _hash_file(digest, path)
    return digest.hexdigest()


def _hash_file(digest: Any, path: str) -> None:
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)


@dataclass(frozen=True)
class Conflict:
    """Why an output must not be written: ``skip`` it (skip_existing), or fail with ``reason``."""

    reason: str
    skip: bool = False


def output_conflict(target: Path, name: str, options: Options) -> Conflict | None:
    """Why ``target`` (the output of input ``name``) must not be written, or None.

    It is an input, or exists (a dangling link too) without ``overwrite``, or
    exists and ``skip_existing`` skips it. A dry run asks the same question.
    """
    if file_id(target) in options.protected:  # the input under this or another name
        return Conflict(f"{name}: output {target} is an input; refusing to write it")
    store = _inside_input(target, options.protected)
    if store is not None:  # a file of a .zarr input's store
        return Conflict(f"{name}: output {target} is inside the input {store}; "
                        "refusing to write it")
    if os.path.lexists(target):
        if options.skip_existing:
            return Conflict("output exists", skip=True)
        if not options.overwrite:
            return Conflict(f"{target}: {ALREADY_EXISTS}")
        node = zarr_node(target)
        if node == "group":  # arrays beside the one that would replace them all
            return Conflict(f"{target}: is a zarr group, not an array; refusing to replace it")
        if node == "array":  # replaced whole, once the new one is written
            if _holds(target, options.protected):
                return Conflict(f"{name}: output {target} holds an input; refusing to "
                                "replace it")
            return None
        try:
            check_replaceable(target)  # a FIFO or a device is never replaced
        except ImageError as exc:
            return Conflict(str(exc))
    return None


def _inside_input(target: Path, protected: frozenset[tuple[int, int]]) -> Path | None:
    """The input folder (a ``.zarr`` store) that ``target`` lies in, links resolved, or None."""
    for folder in Path(os.path.realpath(target)).parents:
        if file_id(folder) in protected:
            return folder
    return None


def _holds(folder: Path, protected: frozenset[tuple[int, int]]) -> bool:
    """Whether an input (by :func:`file_id`) is inside ``folder``, links not followed."""
    for top, dirs, files in os.walk(folder):
        for entry in (*dirs, *files):
            if file_id(os.path.join(top, entry)) in protected:
                return True
    return False


def process(task: Task, options: Options, data: bytes | None = None,
            prefetch: Prefetch | None = None) -> Result:
    """Filter one input into its output. Never raises for a bad file: the Result says why.

    Raises BrokenPipeError if standard output (``-``) is closed by its reader:
    that ends the run, not one file.
    """
    from imgconv.core import jit
    from imgconv.core.threads import set_threads

    start = time.perf_counter()
    set_threads(options.threads)
    jit.set_jit(options.jit)
    name = "<stdin>" if task.source.path == STDIO else task.source.path
    result = Result(name, task.target, Status.FAILED)
    try:
        if task.source.problem is not None:
            raise ImageError(task.source.problem)
        if task.target != STDIO:
            conflict = output_conflict(Path(task.target), name, options)
            if conflict is not None and conflict.skip:
                result.status, result.reason = Status.SKIPPED, conflict.reason
                return result
            if conflict is not None:
                raise ImageError(conflict.reason)
        if options.hash_inputs:
            result.sha256 = _sha256(task.source.path, data)
        if wants_tiles(task.source.path, task.fmt, options):  # (standard input: to .zarr)
            if task.target != STDIO:
                make_folder(Path(task.target))
            # (it says if the extra is missing); None: it wrote the output band by band
            write = process_tiled(task, options, result, name, data)
            if write is None:
                result.status = Status.WRITTEN
                return result
        else:
            write = _render(task, options, result, name, data, prefetch)
        if task.target == STDIO:
            buffer = io.BytesIO()  # whole before anything reaches stdout
            write(buffer)
            try:
                write_all(sys.stdout.buffer, buffer.getbuffer())
            except BrokenPipeError:
                raise
            except OSError as exc:  # the output's fault (/dev/full), not the input's
                raise ImageError(f"<stdout>: cannot write ({exc.strerror or exc})") from None
        else:
            target = Path(task.target)
            make_folder(target)
            try:
                write_atomic(target, write, overwrite=options.overwrite)
            except OSError as exc:  # the output's fault, not the input's: name it
                raise ImageError(f"{target}: cannot write ({exc.strerror or exc})") from None
            except ImageError:
                # absent when checked, there now: another run wrote it meanwhile
                if options.skip_existing and os.path.lexists(target):
                    result.status, result.reason = Status.SKIPPED, "output exists"
                    return result
                raise
        result.status = Status.WRITTEN
    except ImgconvError as exc:
        result.reason = str(exc)
    except BrokenPipeError:
        if task.target == STDIO:
            raise
        result.reason = f"{name}: {os.strerror(32)}"
    except OSError as exc:
        result.reason = f"{name}: {exc.strerror or exc}"
    except Exception as exc:  # one bad file never stops the batch
        detail = traceback.format_exc() if options.debug else f"{type(exc).__name__}: {exc}"
        result.reason = f"{name}: internal error: {detail} (rerun with `debug=True` for details)"
    finally:
        result.seconds = time.perf_counter() - start
    return result


def _render(task: Task, options: Options, result: Result, name: str, data: bytes | None,
            prefetch: Prefetch | None) -> Callable[[Any], None]:
    """The in-memory path: decode, run the pipeline, and the output's encoder (a function
    of the stream it writes to)."""
    picture = prefetch.take(task.source.path, options.max_pixels, options.gray) \
        if prefetch is not None else None
    if picture is None:
        picture = load(data if data is not None else task.source.path, gray=options.gray,
                       max_pixels=options.max_pixels)
    result.notes.extend(picture.notes)
    result.input_shape = list(picture.shape)
    check_stage_sizes(options.pipeline, picture, options.max_pixels, name)
    pipeline = options.pipeline if task.pick is None else \
        dataclasses.replace(options.pipeline, pick=task.pick)
    with warnings_as_notes(name, result.notes):  # numpy's, e.g. from NaN in a float TIFF
        array, alpha, notes = render(picture, pipeline, task.fmt, name,
                                     alpha=options.alpha, depth=options.depth,
                                     reuse=not options.verify)
    result.notes.extend(notes)
    result.output_shape = list(array.shape)
    if options.verify:
        result.max_error = _verify(picture, options, name)
    icc_profile, exif, qtables = picture.icc_profile, picture.exif, picture.qtables
    del picture  # the input's pixels are not needed while the output is encoded

    def write(stream: Any) -> None:
        encode(array, task.fmt, stream, alpha=alpha, depth=array_depth(array),
               quality=options.quality, icc_profile=icc_profile, exif=exif, qtables=qtables,
               name="<stdout>" if task.target == STDIO else task.target,
               compression=options.compression)

    return write


def make_folder(target: Path) -> None:
    """Create the folder ``target`` goes in; ImageError naming the output if it cannot be."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ImageError(
            f"{target}: cannot create the folder {target.parent}: a file is in the way"
        ) from None
    except OSError as exc:
        raise ImageError(f"{target}: cannot create the folder {target.parent} "
                         f"({exc.strerror or exc})") from None


def check_stage_sizes(pipeline: Pipeline, picture: Picture, max_pixels: int,
                      name: str) -> None:
    """Refuse an image on which a stage's result would exceed ``max_pixels``, before computing."""
    problem = pipeline.size_problem(picture.shape[:2], max_pixels)  # type: ignore[arg-type]
    if problem is not None:
        raise ImageError(f"{name}: {problem} (`max_pixels`)")


def write_all(stream: Any, data: Any) -> None:
    """Write every byte of ``data`` to ``stream`` and flush it, or raise OSError.

    A pipe whose reader goes away takes part of a large write and says nothing
    (BufferedWriter returns the short count); a non-blocking one raises
    BlockingIOError when full. Both are continued here until all is written or
    the write fails (BrokenPipeError once the reader is gone).
    """
    view = memoryview(data).cast("B")
    while view:
        try:
            n = stream.write(view)
        except BlockingIOError as exc:
            n = exc.characters_written
            _wait_writable(stream)
        else:
            if n is None:  # a raw non-blocking stream with no room
                _wait_writable(stream)
                n = 0
            elif n == 0:
                raise OSError(5, "the stream took none of the bytes")  # EIO
        view = view[n:]
    while True:
        try:
            stream.flush()
            return
        except BlockingIOError:
            _wait_writable(stream)


def _wait_writable(stream: Any) -> None:
    import select

    try:
        select.select([], [stream.fileno()], [], 1.0)
    except (AttributeError, OSError, ValueError):
        time.sleep(0.01)  # no file descriptor to wait on


def _verify(picture: Picture, options: Options, name: str) -> float:
    from imgconv.check import compare, reference

    source = picture.pixels
    ours = options.pipeline.run(source)
    comparison = compare(ours, reference(options.pipeline, source), options.tol)
    if not comparison.ok:
        raise ImageError(
            f"{name}: `verify` failed: max |imgconv - scipy| = {max(comparison.max_abs):.3g} "
            f"> tolerance {comparison.tolerance:.3g}"
        )
    return max(comparison.max_abs)


#: write_atomic's temporary files: ``.NAME.PID.XXXXXXXX.part`` (``.NAME.XXXXXXXX.part`` before
#: the writer's pid was part of the name).
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+?)(?:\.(?P<pid>[0-9]+))?\.[A-Za-z0-9_]+\.part")

#: A temporary file whose writer is gone is removed once untouched this long, in seconds:
#: a run on another machine writing into a shared folder has another pid space.
STALE_SECONDS = 60


def _temporary_files(tasks: Sequence[Task]) -> Iterator[tuple[Path, re.Match[str]]]:
    """Each temporary file in the targets' folders, with its name's parts."""
    folders = {Path(t.target).parent for t in tasks if t.target != STDIO}
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                names = [e.name for e in entries]
        except OSError:  # not there yet, or cannot be read: the tasks will say so
            continue
        for name in names:
            match = TEMPORARY_NAME.fullmatch(name)
            if match:
                yield folder / name, match


def remove_temporary_files(tasks: Sequence[Task]) -> None:
    """Delete what a killed worker left of write_atomic: ``.NAME.*.part`` beside each target."""
    wanted = {(Path(t.target).parent, Path(t.target).name) for t in tasks if t.target != STDIO}
    for path, match in _temporary_files(tasks):
        if (path.parent, match["name"]) in wanted:
            _unlink(path)


def remove_stale_temporary_files(tasks: Sequence[Task]) -> None:
    """Delete temporary files that runs killed earlier (SIGKILL) left in the targets' folders.

    A file is stale when the process named in it is gone and it has not been
    written to for :data:`STALE_SECONDS`.
    """
    now = time.time()
    for path, match in _temporary_files(tasks):
        if match["pid"] is None or _pid_alive(int(match["pid"])):
            continue
        try:
            if now - path.stat().st_mtime > STALE_SECONDS:
                _unlink(path)
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    if os.name != "posix" or pid == os.getpid():
        return True  # (os.kill(pid, 0) would end the process on Windows)
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's
        return True
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    return True


def _unlink(path: Path) -> None:
    """Remove a temporary file, or a temporary folder (a .zarr store being written)."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
