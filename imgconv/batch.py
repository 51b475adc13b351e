"""Inputs to outputs: planning, the per-file job, executors, and the run's manifest.

A batch never stops for one bad file: each job returns a :class:`Result`
whose status is ``written``, ``skipped`` or ``failed`` (with the reason).
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import io
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Formatter
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from imgconv.errors import ImageError, ImgconvError, UsageError
from imgconv.imageio import (
    DEFAULT_MAX_PIXELS,
    EXTENSIONS,
    FORMATS,
    INPUT_EXTENSIONS,
    SIXTEEN_BIT,
    Picture,
    encode,
    format_for,
    load,
    output_array,
    write_atomic,
)
from imgconv.opening import check_regular, warnings_as_notes
from imgconv.pipeline import CLIP_WARNING_FRACTION, ConvStage, Pipeline, PoolStage, map_output

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from imgconv.prefetch import Prefetch

ALPHA_MODES = ("auto", "premultiply", "copy", "drop")
NAME_FIELDS = ("stem", "ext", "kernel", "name")
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


@dataclass
class Result:
    input: str
    output: str
    status: str  # written | skipped | failed
    reason: str = ""
    input_shape: list[int] | None = None
    output_shape: list[int] | None = None
    seconds: float = 0.0
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    max_error: float | None = None


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
    are left out, so a run whose --out-dir sits inside its input folder does not
    read its own outputs. A path that does not exist is kept, so that it is
    reported as a failed input; so is a folder given that cannot be read. A
    sub-folder that cannot be read is a line in ``warnings``. One file under
    several paths (a link, ``./x``) is kept once, under its first.
    """
    if any(arg == "" for arg in args):
        raise UsageError("an input path is empty ('')")
    skip = os.path.realpath(exclude) + os.sep if exclude else None

    def wanted(p: Path, base: str) -> bool:
        # an --out-dir equal to the folder given is not excluded: its files are inputs
        inside = skip is not None and os.path.realpath(p).startswith(skip)
        return _is_image_file(p) and not (inside and os.path.realpath(base) + os.sep != skip)

    sources: list[Source] = []
    for arg in args:
        errors: list[OSError] = []
        if arg == STDIO:
            sources.append(Source(STDIO))
        elif os.path.isdir(arg):
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
    """How many sub-folders the folders in ``args`` have (not read without --recursive)."""
    count = 0
    for arg in args:
        if arg != STDIO and os.path.isdir(arg):
            with contextlib.suppress(OSError), os.scandir(arg) as entries:  # reported elsewhere
                count += sum(1 for e in entries if not e.name.startswith(".") and e.is_dir())
    return count


def _output_name(template: str, source: Source, fmt: str, pipeline: Pipeline) -> Path:
    relative = source.relative
    fields = {
        "stem": relative.stem,
        "ext": FORMATS[fmt][1] if fmt else relative.suffix,
        "kernel": _file_safe(pipeline.name),
        "name": relative.name,
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
        raise UsageError(f"--name {template!r}: {exc}") from None
    for _, name, spec, conversion in parts:
        if name is not None and (spec or conversion):
            raise UsageError(f"--name {template!r}: fields take no format spec or conversion")
        if name is not None and name not in NAME_FIELDS:
            raise UsageError(
                f"--name: unknown field {{{name}}}; use "
                + ", ".join(f"{{{f}}}" for f in NAME_FIELDS)
            )
    if not template.strip():
        raise UsageError("--name must not be empty")
    if ".." in Path(template).parts or template.startswith(("/", "\\")):
        raise UsageError(f"--name {template!r}: must stay inside --out-dir (no '..' or '/')")


def check_depth(tasks: Sequence[Task], depth: str | None) -> None:
    """Refuse a --depth that an output's format cannot hold, before any file is touched."""
    for task in tasks:
        if depth == "16" and task.fmt not in SIXTEEN_BIT:
            raise UsageError(f"--depth 16 needs png or tiff output, not {task.fmt} "
                             f"({task.target})")
        if depth == "float" and task.fmt != "tiff":
            raise UsageError(f"--depth float needs tiff output, not {task.fmt} ({task.target})")


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
        raise UsageError("give exactly one of -o/--output FILE and --out-dir DIR")
    if output == "" or out_dir == "":
        raise UsageError(f"{'-o' if output == '' else '--out-dir'}: the path is empty ('')")
    if not sources:
        raise UsageError("no input images found")
    if output is not None:
        if len(sources) > 1:
            raise UsageError(
                f"-o/--output takes one input, got {len(sources)}; use --out-dir DIR for several"
            )
        if name is not None:
            raise UsageError("--name goes with --out-dir, not -o")
        if output == STDIO and fmt is None:
            fmt = EXTENSIONS.get(Path(sources[0].path).suffix.lower())  # as the input
            if fmt is None or sources[0].path == STDIO:
                raise UsageError("-o - (standard output) needs --format when the input's "
                                 "extension does not name a format")
        if os.path.isdir(output):
            raise UsageError(f"-o {output}: is a folder; use --out-dir {output}")
        ext = Path(output).suffix.lower()
        named = EXTENSIONS.get(ext) if output != STDIO else None
        if fmt is not None and named is not None and named != format_for("", fmt):
            raise UsageError(
                f"-o {output}: the extension says {named} but --format says "
                f"{format_for('', fmt)}; make them agree"
            )
        return [Task(sources[0], output, format_for(output, fmt) if output != STDIO
                     else format_for("", fmt))]
    assert out_dir is not None
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out-dir {out_dir}: exists and is not a folder")
    template = name or "{stem}{ext}"
    check_name_template(template)
    explicit = format_for("", fmt) if fmt is not None else None
    tasks = []
    for source in sources:
        fmt_for_ext = explicit or EXTENSIONS.get(source.relative.suffix.lower(), "png")
        relative = _output_name(template, source, fmt_for_ext, pipeline)
        # the name's extension says the format, as -o's does
        named = EXTENSIONS.get(relative.suffix.lower())
        if named is None and explicit is None:
            raise UsageError(
                f"--name {template!r} gives {relative.name!r}, which does not end in an "
                f"extension imgconv writes ({', '.join(sorted(EXTENSIONS))}); add {{ext}} "
                "or give --format"
            )
        if named is not None and explicit is not None and named != explicit:
            raise UsageError(
                f"--name {template!r} gives {relative.name!r}: the extension says {named} but "
                f"--format says {explicit}; make them agree"
            )
        target_fmt = named or fmt_for_ext
        tasks.append(Task(source, str(Path(out_dir) / relative), target_fmt))
    return tasks


# --- one file -------------------------------------------------------------------------------

def _premultiply_problem(pipeline: Pipeline) -> str | None:
    """Why premultiplied alpha would give wrong colours with this pipeline, or None.

    Colour and alpha go through the same stages in premultiplied form, so a
    kernel bias or a constant border fill (both in colour units) would be
    applied to alpha too, and a multi-channel filter has no per-channel alpha.
    """
    if _has_multichannel_filter(pipeline):
        return "a multi-channel filter"
    for stage in pipeline.conv_stages:
        if any(k.bias for k in stage.members()):
            return f"kernel {stage.spec}, which has a bias"
        if stage.pad_mode == "constant" and stage.cval != 0:
            return "--pad-mode constant with a non-zero --cval"
    return None


def check_alpha_mode(mode: str, pipeline: Pipeline) -> None:
    """Refuse --alpha premultiply where it would give wrong colours (see below)."""
    if mode not in ALPHA_MODES:
        raise UsageError(f"--alpha must be one of {', '.join(ALPHA_MODES)}, got {mode!r}")
    _choose_alpha(mode, pipeline)


def _choose_alpha(mode: str, pipeline: Pipeline) -> str:
    problem = _premultiply_problem(pipeline)
    if mode == "premultiply" and problem is not None:
        raise UsageError(f"--alpha premultiply cannot be used with {problem}; use --alpha copy")
    if mode != "auto":
        return mode
    if pipeline.all_weights_nonnegative() and problem is None:
        return "premultiply"
    return "copy"


def follow_geometry(alpha: Any, pipeline: Pipeline) -> Any:
    """Carry an alpha plane through the stages' geometry without filtering it.

    Each convolution stage samples the alpha under its kernel's anchor (a
    delta kernel with the stage's padding, stride and dilation, nearest
    border); pooling stages pool it with the same window.
    """
    import numpy as np

    from imgconv.core.conv import correlate
    from imgconv.core.pooling import pool

    a = np.asarray(alpha, dtype=np.float32)
    for stage in pipeline.stages:
        if isinstance(stage, ConvStage):
            kernel = stage.members()[0]
            kh, kw = kernel.matrix.shape[:2]
            ay, ax = kernel.anchor if kernel.anchor is not None else (kh // 2, kw // 2)
            if stage.mode == "convolve":
                ay, ax = kh - 1 - ay, kw - 1 - ax
            delta = np.zeros((kh, kw))
            delta[ay, ax] = 1.0
            a = correlate(a, delta, padding=stage.pads(kernel), pad_mode="nearest",
                          stride=stage.stride, dilation=stage.dilation)
        elif isinstance(stage, PoolStage):
            a = pool(a, stage.size, stride=stage.stride, op=stage.op)
    return a


def _output_depth(options: Options, fmt: str, picture: Picture, channels: int) -> str:
    depth = options.depth
    if depth is None:
        if picture.depth == "float" and fmt == "tiff" and channels == 1:
            depth = "float"
        elif picture.depth == "16" and fmt in SIXTEEN_BIT and channels in (1, 3):
            depth = "16"
        else:
            depth = "8"  # float input to png too: the README's "mapped to 8 bits"
    if depth == "16" and fmt not in SIXTEEN_BIT:
        raise UsageError(f"--depth 16 needs png or tiff output, not {fmt}")
    if depth == "float" and fmt != "tiff":
        raise UsageError(f"--depth float needs tiff output, not {fmt}")
    if depth != "8" and channels != 1 and not (depth == "16" and channels == 3):
        raise ImageError(
            f"a {channels}-channel result cannot be written at depth {depth} (16-bit images "
            "have one or three channels, float ones one); use --gray, --depth 8 or .npy"
        )
    return depth


def _has_multichannel_filter(pipeline: Pipeline) -> bool:
    return any(k.matrix.ndim == 3 for s in pipeline.conv_stages for k in s.members())


def render(picture: Picture, options: Options, fmt: str, name: str) -> tuple[Any, Any, list[str]]:
    """Run the pipeline on a picture; returns (encodable array, alpha or None, notes).

    Without ``--verify`` the result may be written over ``picture.pixels``
    (a JPEG decoded into RGBX and written as JPEG: :func:`output_array`).
    """
    import numpy as np

    pipeline = options.pipeline
    notes: list[str] = []
    alpha_mode = _choose_alpha(options.alpha, pipeline) if picture.alpha is not None else "drop"
    pixels = picture.pixels
    multichannel = _has_multichannel_filter(pipeline)
    channels = 1 if multichannel or pixels.ndim == 2 else pixels.shape[2]
    depth = "float" if fmt == "npy" else _output_depth(options, fmt, picture, channels)
    raw = depth == "float"
    out_max = 65535 if depth == "16" else 255
    scale = out_max / picture.max_value
    how = pipeline.output_mapping()

    out_alpha = None
    if alpha_mode == "premultiply":
        a = np.asarray(picture.alpha, dtype=np.float32) / np.float32(picture.max_value)
        weighted = pixels * (a[:, :, None] if pixels.ndim == 3 else a)
        filtered = pipeline.run(weighted)
        filtered_alpha = pipeline.run(a)
        # float rounding leaves ~1e-7 where the blurred alpha is really 0; dividing by it
        # would blow colour up, so alpha under half an output level counts as transparent
        covered = filtered_alpha > 0.5 / out_max
        divisor = np.where(covered, filtered_alpha, 1)
        if filtered.ndim == 3:
            covered, divisor = covered[:, :, None], divisor[:, :, None]
        values = np.where(covered, filtered / divisor, 0).astype(filtered.dtype)
        out_alpha = filtered_alpha * np.float32(picture.max_value)
        if raw:
            return values.astype(np.float32), None, notes
        mapped, clipped = map_output(values, how, scale=scale, out_max=out_max)
    else:
        if raw:
            return pipeline.run(pixels).astype(np.float32, copy=False), None, notes
        # the result may go over the input, which nothing reads afterwards but --verify
        reuse = None if options.verify else pixels
        mapped, clipped = pipeline.run_mapped(
            pixels, how, scale=scale, out_max=out_max,
            allocate=lambda shape, dtype: output_array(shape, dtype, fmt, reuse=reuse))
        if alpha_mode == "copy":
            out_alpha = follow_geometry(picture.alpha, pipeline)

    remedies = pipeline.clipping_remedies(how)
    if clipped > CLIP_WARNING_FRACTION and remedies:
        notes.append(
            f"{name}: {clipped:.1%} of values were clipped by --output-map {how}; "
            f"try --output-map {' or '.join(remedies)}"
        )
    if out_alpha is not None and (fmt in ("jpg", "bmp") or (depth == "16" and mapped.ndim == 2)):
        notes.append(f"{name}: {fmt} {depth}-bit output cannot hold alpha; alpha dropped")
        out_alpha = None
    if out_alpha is not None:
        out_alpha, _ = map_output(out_alpha, "clip", scale=scale, out_max=out_max)
    return mapped, out_alpha, notes


def _sha256(path: str, data: bytes | None = None) -> str:
    """The sha256 of ``data``, or else of the file: for --manifest.

    hashlib loads OpenSSL (3 MiB of memory), so only runs that ask for it import it.
    """
    import hashlib

    if data is not None:
        return hashlib.sha256(data).hexdigest()
    check_regular(path)  # a FIFO would block the open below
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: :func:`output_conflict`'s answer for an output that --skip-existing skips
SKIP = "skip"


def output_conflict(target: Path, name: str, options: Options) -> str | None:
    """Why ``target`` (the output of input ``name``) must not be written, :data:`SKIP`, or None.

    The error message when it is an input, or exists (a dangling link too)
    without --overwrite or --skip-existing. --dry-run asks the same question.
    """
    if file_id(target) in options.protected:  # the input under this or another name
        return f"{name}: output {target} is an input; refusing to write it"
    if os.path.lexists(target):
        if options.skip_existing:
            return SKIP
        if not options.overwrite:
            return f"{target}: already exists (use --overwrite to replace it)"
    return None


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
    result = Result(name, task.target, "failed")
    try:
        if task.source.problem is not None:
            raise ImageError(task.source.problem)
        if task.target != STDIO:
            conflict = output_conflict(Path(task.target), name, options)
            if conflict == SKIP:
                result.status, result.reason = "skipped", "output exists"
                return result
            if conflict is not None:
                raise ImageError(conflict)
        if options.hash_inputs:
            result.sha256 = _sha256(task.source.path, data)
        picture = prefetch.take(task.source.path, options.max_pixels, options.gray) \
            if prefetch is not None else None
        if picture is None:
            picture = load(data if data is not None else task.source.path, gray=options.gray,
                           max_pixels=options.max_pixels)
        result.notes.extend(picture.notes)
        result.input_shape = list(picture.shape)
        check_size(options.pipeline, picture, options.max_pixels, name)
        with warnings_as_notes(name, result.notes):  # numpy's, e.g. from NaN in a float TIFF
            array, alpha, notes = render(picture, options, task.fmt, name)
        result.notes.extend(notes)
        result.output_shape = list(array.shape)
        if options.verify:
            result.max_error = _verify(picture, options, name)
        icc_profile, exif, qtables = picture.icc_profile, picture.exif, picture.qtables
        del picture  # the input's pixels are not needed while the output is encoded

        def write(stream: Any) -> None:
            encode(array, task.fmt, stream, alpha=alpha, depth=_depth_of(array),
                   quality=options.quality, icc_profile=icc_profile, exif=exif, qtables=qtables,
                   name="<stdout>" if task.target == STDIO else task.target)

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
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise ImageError(
                    f"{target}: cannot create the folder {target.parent}: a file is in the way"
                ) from None
            except OSError as exc:
                raise ImageError(f"{target}: cannot create the folder {target.parent} "
                                 f"({exc.strerror or exc})") from None
            try:
                write_atomic(target, write, overwrite=options.overwrite)
            except OSError as exc:  # the output's fault, not the input's: name it
                raise ImageError(f"{target}: cannot write ({exc.strerror or exc})") from None
            except ImageError:
                # absent when checked, there now: another run wrote it meanwhile
                if options.skip_existing and os.path.lexists(target):
                    result.status, result.reason = "skipped", "output exists"
                    return result
                raise
        result.status = "written"
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
        result.reason = f"{name}: internal error: {detail} (rerun with --debug for details)"
    finally:
        result.seconds = time.perf_counter() - start
    return result


def check_size(pipeline: Pipeline, picture: Picture, max_pixels: int, name: str) -> None:
    """Refuse an image on which a stage's result would exceed ``max_pixels``, before computing."""
    problem = pipeline.size_problem(picture.shape[:2], max_pixels)  # type: ignore[arg-type]
    if problem is not None:
        raise ImageError(f"{name}: {problem} (--max-pixels)")


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


def _depth_of(array: Any) -> str:
    kind = array.dtype.kind
    return "float" if kind == "f" else "16" if array.dtype.itemsize == 2 else "8"


def _verify(picture: Picture, options: Options, name: str) -> float:
    from imgconv.check import compare, reference

    source = picture.pixels
    ours = options.pipeline.run(source)
    comparison = compare(ours, reference(options.pipeline, source), options.tol)
    if not comparison.ok:
        raise ImageError(
            f"{name}: --verify failed: max |imgconv - scipy| = {max(comparison.max_abs):.3g} "
            f"> tolerance {comparison.tolerance:.3g}"
        )
    return max(comparison.max_abs)


# --- executors ------------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs a function over items and yields results as they complete (in any order).

    ``lost(item, reason)`` makes the result for an item whose run was lost (a
    worker process died); an executor calls it instead of raising.
    """

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], lost: Callable[[T, str], R]
    ) -> Iterator[R]: ...


class SerialExecutor:
    """In this process, one at a time."""

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], lost: Callable[[T, str], R]
    ) -> Iterator[R]:
        for item in items:
            yield fn(item)


WORKER_DIED = "a worker process died while filtering it (killed, out of memory, or crashed)"


class ProcessExecutor:
    """A pool of worker processes; at most ``jobs * 2`` tasks are in flight.

    If a worker dies, the pool cannot say which file it had, so every file in
    flight is run again in a new pool; a file in flight at two deaths is
    reported lost. A crashing file thus fails alone, and the batch goes on.
    """

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.worker_died = False

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], lost: Callable[[T, str], R]
    ) -> Iterator[R]:
        # multiprocessing costs ~30 ms to import: only runs with several jobs pay it
        from concurrent.futures import ProcessPoolExecutor

        queue = list(reversed(range(len(items))))
        deaths = [0] * len(items)
        while queue:
            with ProcessPoolExecutor(max_workers=self.jobs, initializer=_worker_init) as pool:
                yield from self._drain(pool, fn, items, queue, deaths, lost)

    def _drain(
        self, pool: ProcessPoolExecutor, fn: Callable[[T], R], items: Sequence[T],
        queue: list[int], deaths: list[int], lost: Callable[[T, str], R],
    ) -> Iterator[R]:
        from concurrent.futures.process import BrokenProcessPool

        pending: dict[Future[R], int] = {}
        try:
            while queue or pending:
                broken = False
                while queue and len(pending) < self.jobs * 2:
                    index = queue.pop()
                    try:
                        pending[pool.submit(fn, items[index])] = index
                    except BrokenProcessPool:  # a worker died since the last wait
                        # counted as a death too, so a pool that cannot start ends
                        deaths[index] += 1
                        if deaths[index] >= 2:
                            yield lost(items[index], WORKER_DIED)
                        else:
                            queue.append(index)
                        broken = True
                        break
                done: set[Future[R]] = set()
                if not broken:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
                if broken:
                    self.worker_died = True
                    for future, index in pending.items():
                        if future.done() and future.exception() is None:
                            yield future.result()
                            continue
                        deaths[index] += 1
                        if deaths[index] >= 2:
                            yield lost(items[index], WORKER_DIED)
                        else:
                            queue.append(index)  # again, first, in the next pool
                    return
                for future in done:
                    pending.pop(future)
                    yield future.result()
        except BaseException:
            # Ctrl-C or an error: stop the workers now rather than after their current
            # and queued files. SIGTERM makes each raise KeyboardInterrupt, so its
            # write_atomic removes its temporary file before the process exits.
            for process in getattr(pool, "_processes", {}).values():
                process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


#: True in a worker process while it filters a file (see :func:`_interrupt`).
_in_job = False
#: True in a worker process once :func:`_interrupt` has raised KeyboardInterrupt.
_stopping = False


def _interrupt(signum: int, frame: Any) -> None:
    """A worker's SIGTERM handler: stop cleanly, whatever the worker is doing.

    While filtering a file, raise KeyboardInterrupt so that ``write_atomic``
    removes its temporary file before the worker exits. Anywhere else (waiting
    for work, or inside the pool's own queue code, whose locks a raised
    exception can leave held, hanging the pool's shutdown), exit at once.
    Signals after the first are ignored: several come at once (SIGHUP or Ctrl-C
    to the process group, then the main process's SIGTERM; the parent's death
    seen twice), and a second KeyboardInterrupt raised inside ``write_atomic``'s
    cleanup would skip the removal of its temporary file.
    """
    global _stopping
    if _stopping:
        return
    if _in_job:
        _stopping = True
        raise KeyboardInterrupt
    _exit(128 + signum)


def _exit(code: int) -> None:
    """End a worker at once, removing the compiled path's temporary folder if it made one.

    (``os._exit`` skips the finalizer that would remove it.)
    """
    if "imgconv.core.jit" in sys.modules:
        from imgconv.core import jit

        jit.remove_fallback_dir()
    os._exit(code)


def _worker_init() -> None:
    import signal

    # --jobs processes already fill the cores: one core thread each, unless the user says
    # otherwise with IMGCONV_THREADS (or --threads, which Options carries)
    os.environ.setdefault("IMGCONV_THREADS", "1")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # Ctrl-C reaches the whole process group
    if hasattr(signal, "SIGHUP"):  # a closed terminal: as SIGTERM
        signal.signal(signal.SIGHUP, _interrupt)
    _end_with_parent()


#: How often a worker looks whether the process that started it is still there, in seconds.
PARENT_POLL_SECONDS = 0.5


def _end_with_parent() -> None:
    """Make this worker end (as on SIGTERM: its temporary file removed) when its parent does.

    A killed main process (SIGKILL, the OOM killer) can clean up nothing
    itself; its workers would go on writing, then wait for work forever. Linux
    sends SIGTERM at the parent's death (prctl PR_SET_PDEATHSIG); elsewhere,
    and as a second line, a thread polls the parent's pid.
    """
    import signal
    import threading

    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent,), name="imgconv-parent-watch",
                     daemon=True).start()


def _watch_parent(parent: int) -> None:
    import signal

    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread by _interrupt


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on macOS or Windows
        return os.cpu_count() or 1


def make_executor(jobs: int, tasks: int) -> Executor:
    """At most one worker per task and per CPU: each worker already keeps a core busy (one
    core thread), so more would only share the cores and add their memory (~30 MB each)."""
    jobs = max(1, min(jobs, tasks, available_cpus()))
    return SerialExecutor() if jobs == 1 else ProcessExecutor(jobs)


class _Job:
    """A picklable callable for executors: one task with the run's options."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.parent = os.getpid()

    def __call__(self, task: Task) -> Result:
        global _in_job
        _in_job = True
        try:
            result = process(task, self.options)
            _in_job = False  # not in a finally: a SIGTERM there would escape the except
            return result
        except KeyboardInterrupt:
            # in a worker process: the temporary file is already gone (write_atomic's
            # finally ran); exit instead of taking the next queued file
            if os.getpid() != self.parent:
                _exit(130)
            raise


def run(
    tasks: Sequence[Task],
    options: Options,
    *,
    executor: Executor | None = None,
    stdin: bytes | None = None,
    on_result: Callable[[Result], None] | None = None,
    prefetch: Prefetch | None = None,
) -> list[Result]:
    """Process every task; results in completion order. Duplicate targets fail after the first.

    ``prefetch`` is a :class:`~imgconv.prefetch.Prefetch` of an input, which
    is then processed in this process (a run of one file).
    """
    results: list[Result] = []
    seen: dict[object, str] = {}
    runnable: list[Task] = []
    remove_stale_temporary_files(tasks)
    for task in tasks:
        key = task.target if task.target == STDIO else output_key(task.target)
        if key in seen and task.target != STDIO:
            clash = Result(task.source.path, task.target, "failed",
                           f"{task.source.path}: same output {task.target} as {seen[key]}")
            results.append(clash)
            if on_result:
                on_result(clash)
            continue
        seen[key] = task.source.path
        runnable.append(task)
    if (stdin is not None or prefetch is not None
            or any(t.source.path == STDIO or t.target == STDIO for t in runnable)):
        outcomes: Iterable[Result] = (
            process(t, options, stdin if t.source.path == STDIO else None, prefetch)
            for t in runnable)
    else:
        outcomes = (executor or SerialExecutor()).map_unordered(_Job(options), runnable, _lost)
    for result in outcomes:
        results.append(result)
        if on_result:
            on_result(result)
    if getattr(executor, "worker_died", False):
        remove_temporary_files(runnable)
    return results


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
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def check_manifest_path(path: str, tasks: Sequence[Task], *, overwrite: bool) -> None:
    """Refuse a manifest that would replace an input, an output or an existing file.

    ``-`` is standard output, unless an image goes there.
    """
    if path == "":
        raise UsageError("--manifest: the path is empty ('')")
    if path == STDIO:
        if any(t.target == STDIO for t in tasks):
            raise UsageError("--manifest -: standard output already carries the image "
                             "(-o -); give the manifest a file name")
        return
    if os.path.isdir(path):
        raise UsageError(f"--manifest {path}: is a folder; give a file name such as run.json")
    ident, key = file_id(path), output_key(path)
    for task in tasks:
        if ident is not None and task.source.path != STDIO and file_id(task.source.path) == ident:
            raise UsageError(f"--manifest {path}: is an input image; refusing to replace it")
        if task.target != STDIO and output_key(task.target) == key:
            raise UsageError(f"--manifest {path}: is also the output of {task.source.path}")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"--manifest {path}: already exists (use --overwrite to replace it)")


def _lost(task: Task, reason: str) -> Result:
    return Result(task.source.path, task.target, "failed", f"{task.source.path}: {reason}")


def write_manifest(path: str, options: Options, results: Sequence[Result], *, overwrite: bool,
                   version: str) -> None:
    """A JSON record of the run: version, resolved pipeline, and each input's outcome."""
    import json

    doc = {
        "imgconv": version,
        "pipeline": options.pipeline.to_dict(),
        "output_map": options.pipeline.output_mapping(),  # what "auto" resolved to
        "inputs": [asdict(r) for r in results],
    }
    data = json.dumps(doc, indent=2).encode()
    if path == STDIO:
        write_all(sys.stdout.buffer, data + b"\n")
        return
    target = Path(path)
    if os.path.isdir(target):  # made during the run (an output's folder)
        raise ImageError(f"--manifest {path}: is a folder; give a file name such as run.json")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ImageError(f"--manifest {path}: cannot create the folder {target.parent}: "
                         "a file is in the way") from None
    except OSError as exc:
        raise ImageError(f"--manifest {path}: cannot create the folder {target.parent} "
                         f"({exc.strerror or exc})") from None
    try:
        write_atomic(target, lambda stream: stream.write(data), overwrite=overwrite)
    except OSError as exc:
        raise ImageError(f"--manifest {path}: cannot write it ({exc.strerror or exc})") from None
