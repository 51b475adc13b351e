"""What a batch is to do: its inputs and options, and each input's output path and format."""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from string import Formatter

from imgconv.errors import UsageError
from imgconv.imageio import (
    DEFAULT_MAX_PIXELS,
    EXTENSIONS,
    FORMATS,
    INPUT_EXTENSIONS,
    format_for,
)
from imgconv.pipeline import Pipeline

NAME_FIELDS = ("stem", "ext", "kernel", "name", "map")
STDIO = "-"
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Source:
    """One input: a path (``-`` for stdin) and the folder its output path is relative to.

    ``problem`` says why an input cannot be run at all (a folder that cannot be
    read): :func:`process` reports it as that input's failure.
    """

    path: str
    base: str | None = None
    problem: str | None = None

    @property
    def relative(self) -> Path:
        if self.path == STDIO:
            return Path("stdin")
        if self.base is None:
            return Path(Path(self.path).name)
        return Path(os.path.relpath(self.path, self.base))


@dataclass(frozen=True)
class Task:
    source: Source
    target: str  # a path, or "-" for standard output
    fmt: str
    pick: int | None = None  # with {map} in the name: the one map this output holds


@dataclass(frozen=True)
class Options:
    """How every file of a run is processed."""

    pipeline: Pipeline
    gray: bool = False
    alpha: str = "auto"
    quality: int | None = None
    depth: str | None = None
    overwrite: bool = False
    skip_existing: bool = False
    verify: bool = False
    tol: float | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    hash_inputs: bool = False
    debug: bool = False
    threads: int | None = None  # core threads per process (None: IMGCONV_THREADS or all cores)
    jit: bool | None = None  # the compiled path (None: IMGCONV_JIT, else off)
    protected: frozenset[tuple[int, int]] = frozenset()  # inputs' file_id(): never written
    #: the tiled path (imgconv.batch.tiled): True always, False never, None by size
    tiles: bool | None = None
    #: bytes: a larger working copy takes the tiled path (default: a quarter of RAM, <= 4 GiB)
    memory_limit: int = field(default_factory=lambda: default_memory_limit())
    chunk: int | None = None  # the tiled path's chunk side (None: from memory_limit)
    compression: str | None = None  # a tiled TIFF output's (None: deflate)


#: The default ``memory_limit`` is the machine's memory divided by this, at most
#: MAX_DEFAULT_LIMIT
MEMORY_DIVISOR = 4
MAX_DEFAULT_LIMIT = 4 << 30


def default_memory_limit() -> int:
    """A quarter of the machine's memory, at most 4 GiB."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        total = 8 << 30
    return min(MAX_DEFAULT_LIMIT, total // MEMORY_DIVISOR)


class Status(str, Enum):
    """What became of one input (a string, as the manifest records it)."""

    WRITTEN = "written"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class Result:
    """One input's outcome: its output, status, the reason it failed, and what was measured."""

    input: str
    output: str
    status: Status
    reason: str = ""
    input_shape: list[int] | None = None
    output_shape: list[int] | None = None
    seconds: float = 0.0
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    max_error: float | None = None
    worker: str | None = None  # the Dask worker that made it (None: this machine)


def file_id(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """The (device, inode) of the file at ``path``, links followed; None if it cannot be read.

    Two paths name one file exactly when their ids are equal: a hard link, a
    symlink, a bind mount or another spelling (``./x``, another case on a
    case-insensitive file system) all give the same id, where resolved path
    strings differ.
    """
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def output_key(path: str) -> tuple[object, ...]:
    """A key equal for two paths that would write one directory entry, existing or not.

    The nearest existing folder above ``path`` is taken by :func:`file_id`, the
    names below it as written (a name a file system folds, such as another case,
    is not caught until the file exists).
    """
    names = Path(path).parts
    for i in range(len(names) - 1, -1, -1):
        ident = file_id(os.path.join(*names[:i]) if i else ".")
        if ident is not None:
            return (*ident, *names[i:])
    return (os.path.abspath(path),)


def input_ids(sources: Iterable[Source]) -> frozenset[tuple[int, int]]:
    """The :func:`file_id` of each input file, for :attr:`Options.protected`."""
    ids = (file_id(s.path) for s in sources if s.path != STDIO)
    return frozenset(i for i in ids if i is not None)


def _is_image_file(path: Path) -> bool:
    hidden = path.name.startswith(".")
    # os.path.isfile, not Path.is_file: a file that cannot be looked at is no error here
    return os.path.isfile(path) and path.suffix.lower() in INPUT_EXTENSIONS and not hidden


def _is_store_name(path: str) -> bool:
    """A folder named ``*.zarr``: one array (an input or output), not a folder of files."""
    return path.rstrip("/" + os.sep).lower().endswith(".zarr")


def _cannot_read(exc: OSError) -> str:
    return f"{exc.filename}: cannot read the folder ({exc.strerror or exc})"


def _walk(top: str, recursive: bool, errors: list[OSError]) -> Iterator[Path]:
    """The entries of folder ``top`` (and of its sub-folders with ``recursive``).

    Symlinks to folders are listed, not entered (os.walk's default), so a link
    loop ends; folders that cannot be read are added to ``errors``.
    """
    for folder, dirs, files in os.walk(top, onerror=errors.append):
        if not recursive:
            dirs.clear()
        for name in (*dirs, *files):
            yield Path(folder, name)


def _match(names: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether path components ``names`` match glob components ``pattern`` (``**``: any
    number of folders); a wildcard matches a hidden name only if it starts with a dot."""
    if not pattern:
        return not names
    if pattern[0] == "**":
        return any(_match(names[i:], pattern[1:]) for i in range(len(names) + 1))
    if not names or (names[0].startswith(".") and not pattern[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], pattern[0]) and _match(names[1:], pattern[1:])


def _glob(pattern: str, errors: list[OSError]) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, but ``**`` enters no symlinked folder.

    (Python's glob follows them, so a link to a parent folder makes it run until
    the paths grow too long.) The part before the first ``**`` is globbed as
    usual; below it, :func:`os.walk` lists each folder once and the rest of the
    pattern is matched component by component.
    """
    parts = Path(pattern).parts
    if "**" not in parts:
        return glob.glob(pattern)
    cut = parts.index("**")
    prefix = os.path.join(*parts[:cut]) if cut else ""
    roots = ([r for r in glob.glob(prefix) if os.path.isdir(r)]
             if any(c in prefix for c in GLOB_CHARS) else [prefix])
    found: list[str] = []
    for root in roots:
        for folder, dirs, files in os.walk(root or os.curdir, onerror=errors.append):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # as glob's **
            below = Path(folder).relative_to(root or os.curdir).parts
            found.extend(os.path.join(root, *below, name) for name in (*dirs, *files)
                         if _match((*below, name), parts[cut:]))
    return found


def expand_inputs(
    args: Sequence[str], *, recursive: bool = False, exclude: str | None = None,
    warnings: list[str] | None = None,
) -> list[Source]:
    """Files as given; folders' image files (descending with ``recursive``); glob patterns.

    Files found in folders or by patterns under ``exclude`` (the output folder)
    are left out, so a run whose output folder sits inside its input folder does not
    read its own outputs. A path that does not exist is kept, so that it is
    reported as a failed input; so is a folder given that cannot be read. A
    sub-folder that cannot be read is a line in ``warnings``. One file under
    several paths (a link, ``./x``) is kept once, under its first.
    """
    if any(arg == "" for arg in args):
        raise UsageError("an input path is empty ('')")
    skip = os.path.realpath(exclude) + os.sep if exclude else None

    def wanted(p: Path, base: str) -> bool:
        # an output folder equal to the folder given is not excluded: its files are inputs
        inside = skip is not None and os.path.realpath(p).startswith(skip)
        return _is_image_file(p) and not (inside and os.path.realpath(base) + os.sep != skip)

    sources: list[Source] = []
    for arg in args:
        errors: list[OSError] = []
        if arg == STDIO:
            sources.append(Source(STDIO))
        elif os.path.isdir(arg) and not _is_store_name(arg):
            found = sorted(_walk(arg, recursive, errors))
            sources.extend(Source(str(p), arg) for p in found if wanted(p, arg))
            for error in [e for e in errors if e.filename == arg]:  # the folder given
                sources.append(Source(arg, problem=_cannot_read(error)))
                errors.remove(error)
        elif not os.path.lexists(arg) and any(c in arg for c in GLOB_CHARS):
            base = arg[: min(arg.index(c) for c in GLOB_CHARS if c in arg)]
            base_dir = os.path.dirname(base) or "."
            matches = [m for m in sorted(_glob(arg, errors)) if wanted(Path(m), base_dir)]
            if not matches and not errors:
                raise UsageError(f"{arg}: the pattern matches no image files")
            sources.extend(Source(m, base_dir) for m in matches)
        else:
            sources.append(Source(arg))
        if warnings is not None:
            warnings.extend(_cannot_read(e) for e in errors)
    unique: dict[object, Source] = {}
    for source in sources:  # the same file named twice is filtered once
        key = (source.path if source.path == STDIO or source.problem
               else file_id(source.path) or os.path.realpath(source.path))
        unique.setdefault(key, source)
    return list(unique.values())


def skipped_subfolders(args: Sequence[str]) -> int:
    """How many sub-folders the folders in ``args`` have (not read unless ``recursive``)."""
    count = 0
    for arg in args:
        if arg != STDIO and os.path.isdir(arg) and not _is_store_name(arg):
            with contextlib.suppress(OSError), os.scandir(arg) as entries:  # reported elsewhere
                count += sum(1 for e in entries if not e.name.startswith(".") and e.is_dir())
    return count


def _output_name(template: str, source: Source, fmt: str, pipeline: Pipeline,
                 map_name: str = "") -> Path:
    relative = source.relative
    fields = {
        "stem": relative.stem,
        "ext": FORMATS[fmt][1] if fmt else relative.suffix,
        "kernel": _file_safe(pipeline.name),
        "name": relative.name,
        "map": map_name,
    }
    return relative.parent / template.format(**fields)


def _file_safe(text: str, limit: int = 60) -> str:
    """Kernel specs as part of a file name; different specs give different names.

    A spec of letters, digits and ``. = + , -`` is kept as it is, ``:`` written
    ``_`` (which such a spec cannot contain); any other spec, or one longer than
    ``limit``, becomes a slug of it followed by a hash of the whole spec.

    >>> _file_safe("gaussian:sigma=2")
    'gaussian_sigma=2'
    >>> _file_safe("0 1 0; 1 -4 1; 0 1 0")
    '0_1_0_1_-4_1_0_1_0-5027ea9f'
    """
    import zlib

    kept = text.replace(":", "_")
    if ("_" not in text and len(kept) <= limit and not kept.endswith(".")
            and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.=+,_-]*", kept)):
        return kept
    digest = f"{zlib.crc32(text.encode()):08x}"
    slug = re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_.")[: limit - 9].rstrip("_.")
    return f"{slug or 'kernel'}-{digest}"


def check_name_template(template: str) -> None:
    try:
        parts = list(Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(f"`name` {template!r}: {exc}") from None
    for _, name, spec, conversion in parts:
        if name is not None and (spec or conversion):
            raise UsageError(f"`name` {template!r}: fields take no format spec or conversion")
        if name is not None and name not in NAME_FIELDS:
            raise UsageError(
                f"`name`: unknown field {{{name}}}; use "
                + ", ".join(f"{{{f}}}" for f in NAME_FIELDS)
            )
    if not template.strip():
        raise UsageError("`name` must not be empty")
    if ".." in Path(template).parts or template.startswith(("/", "\\")):
        raise UsageError(f"`name` {template!r}: must stay inside `out_dir` (no '..' or '/')")


def map_fields(pipeline: Pipeline) -> list[str]:
    """``{map}`` of each map: a stack member's name (file-safe, ``@`` as ``-``), else the
    map's index.

    >>> from imgconv.kernels import from_array
    >>> import numpy as np
    >>> map_fields(Pipeline.from_options(["identity"]))
    Traceback (most recent call last):
    ...
    imgconv.errors.UsageError: `name` {map} needs maps: a stack bank or a layer's weights
    """
    count = pipeline.maps()
    if count is None:
        raise UsageError("`name` {map} needs maps: a stack bank or a layer's weights")
    # a rotated member's "@": kirsch-n@45 is written kirsch-n-45
    fields = [_file_safe(n.replace("@", "-")) for n in pipeline.map_names()]
    if len(fields) != count or len(set(fields)) != count:
        return [str(i) for i in range(count)]
    return fields


def check_maps(tasks: Sequence[Task], pipeline: Pipeline, depth: str | None) -> None:
    """Refuse an 8-bit image output of maps it does not show, before any file is touched."""
    from imgconv.pipeline.render import IMAGE_MAPS, maps_problem

    maps = pipeline.maps()
    if maps is None or maps in IMAGE_MAPS:
        return
    for task in tasks:
        if task.pick is None and task.fmt != "npy" and not (task.fmt == "tiff"
                                                            and depth == "float"):
            raise UsageError(f"{maps_problem(maps, task.fmt)} ({task.target})")


def check_depth(tasks: Sequence[Task], depth: str | None) -> None:
    """Refuse a ``depth`` that an output's format cannot hold, before any file is touched."""
    from imgconv.pipeline.render import depth_problem

    for task in tasks:
        problem = None if depth is None else depth_problem(depth, task.fmt)
        if problem is not None:
            raise UsageError(f"{problem} ({task.target})")


def plan(
    sources: Sequence[Source],
    pipeline: Pipeline,
    *,
    output: str | None,
    out_dir: str | None,
    name: str | None,
    fmt: str | None,
) -> list[Task]:
    """Decide each input's output path and format; raises UsageError for impossible requests."""
    if (output is None) == (out_dir is None):
        raise UsageError("give exactly one of `output` FILE and `out_dir` DIR")
    if output == "" or out_dir == "":
        raise UsageError(f"{'`output`' if output == '' else '`out_dir`'}: the path is empty ('')")
    if not sources:
        raise UsageError("no input images found")
    if output is not None:
        if len(sources) > 1:
            raise UsageError(
                f"`output` takes one input, got {len(sources)}; use `out_dir` DIR for several"
            )
        if name is not None:
            raise UsageError("`name` goes with `out_dir`, not `output`")
        if output == STDIO and fmt is None:
            fmt = EXTENSIONS.get(Path(sources[0].path).suffix.lower())  # as the input
            if fmt is None or sources[0].path == STDIO:
                raise UsageError("`output=-` (standard output) needs `format` when the input's "
                                 "extension does not name a format")
        if output == STDIO and format_for("", fmt) == "zarr":
            raise UsageError("`output=-`: a .zarr store is a folder; it cannot go to standard "
                             "output")
        if os.path.isdir(output) and not _is_store_name(output):
            raise UsageError(f"`output` {output}: is a folder; use `out_dir` {output}")
        ext = Path(output).suffix.lower()
        named = EXTENSIONS.get(ext) if output != STDIO else None
        if fmt is not None and named is not None and named != format_for("", fmt):
            raise UsageError(
                f"`output` {output}: the extension says {named} but `format` says "
                f"{format_for('', fmt)}; make them agree"
            )
        return [Task(sources[0], output, format_for(output, fmt) if output != STDIO
                     else format_for("", fmt))]
    assert out_dir is not None
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"`out_dir` {out_dir}: exists and is not a folder")
    template = name or "{stem}{ext}"
    check_name_template(template)
    explicit = format_for("", fmt) if fmt is not None else None
    maps: list[tuple[int | None, str]] = [(None, "")]
    if "{map}" in template:
        maps = list(enumerate(map_fields(pipeline)))
    tasks = []
    for source, (pick, map_name) in ((s, m) for s in sources for m in maps):
        fmt_for_ext = explicit or EXTENSIONS.get(source.relative.suffix.lower(), "png")
        relative = _output_name(template, source, fmt_for_ext, pipeline, map_name)
        # the name's extension says the format, as -o's does
        named = EXTENSIONS.get(relative.suffix.lower())
        if named is None and explicit is None:
            raise UsageError(
                f"`name` {template!r} gives {relative.name!r}, which does not end in an "
                f"extension imgconv writes ({', '.join(sorted(EXTENSIONS))}); add {{ext}} "
                "or give `format`"
            )
        if named is not None and explicit is not None and named != explicit:
            raise UsageError(
                f"`name` {template!r} gives {relative.name!r}: the extension says {named} but "
                f"`format` says {explicit}; make them agree"
            )
        target_fmt = named or fmt_for_ext
        tasks.append(Task(source, str(Path(out_dir) / relative), target_fmt, pick))
    return tasks
