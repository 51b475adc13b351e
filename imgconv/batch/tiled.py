"""One input through the tiled path: when it is taken, its plan, and the file it makes.

An input takes the tiled path (:mod:`imgconv.tiled`) when it is a TIFF,
``.npy`` or ``.zarr`` and ``tiles`` says so, or (``tiles=None``) when its
float32 working copy would pass ``memory_limit`` or it has more pixels than
``max_pixels``: its memory is bounded by the chunks, not the image. A ``.zarr``
is always read and written this way.

Only :func:`process_tiled` needs the ``scale`` extra, imported when a file
takes the path; what decides the path and plans it reads headers alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgconv.errors import ImageError, UsageError
from imgconv.imageio import STREAM_FORMATS, array_header, tiff_orientation
from imgconv.opening import stream_format
from imgconv.pipeline.stages import ActivationStage

if TYPE_CHECKING:
    from imgconv.batch.tasks import Options, Result, Task
    from imgconv.pipeline import Pipeline

#: Chunks are this many rows (a TIFF output's tile side) and at most MAX_CHUNK_WIDTH wide
CHUNK_STEP = 256
MAX_CHUNK_WIDTH = 2048
#: Bytes of working memory a chunk's float32 sample takes at the peak: the gathered
#: pixels, the response, a bank's accumulator and the mapped block, with slack
BYTES_PER_SAMPLE = 24
#: The samples the tiled path reads (:func:`imgconv.imageio.depth_of`); others (int16 TIFFs)
#: stay on the in-memory path, which reads or refuses them
TILED_DTYPES = ("uint8", "uint16", "float16", "float32", "float64")
#: The most chunks an image may be cut into (each is a task of dask's graph, ~1 KB)
MAX_CHUNKS = 250_000
#: What the process holds before any pixel: Python, numpy, dask, tifffile, the codecs
BASE_BYTES = 160 << 20

_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)b?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``512MB``, ``2GiB``, ``1.5G`` or ``1000000`` (k, M, G, T: powers of 1000;
    with ``i``, of 1024).

    >>> parse_size("2GiB"), parse_size("1.5G"), parse_size("512MB")
    (2147483648, 1500000000, 512000000)
    """
    match = _SIZE.fullmatch(text)
    if not match:
        raise UsageError(f"`memory_limit` must be a size such as 512MB, 2GiB or 1.5G, "
                         f"got {text!r}")
    number, unit, binary = float(match[1]), match[2].lower(), match[3]
    power = "kmgt".index(unit) + 1 if unit else 0
    size = number * (1024 if binary else 1000) ** power
    if not math.isfinite(size) or size < 1 or size > 2**62:
        raise UsageError(f"`memory_limit` must be at least one byte and at most 4 EiB, "
                         f"got {text!r}")
    return int(size)


def input_shape(path: str) -> tuple[int, ...] | None:
    """(H, W) or (H, W, C) of a TIFF, ``.npy`` or ``.zarr`` from its header, or None."""
    header = stream_header(path)
    return None if header is None else header[0]


def stream_header(path: str) -> tuple[tuple[int, ...], str] | None:
    """(shape (H, W[, C]), dtype name) of a TIFF, ``.npy`` or ``.zarr``, read from its
    header; None if it cannot be read (the run says why)."""
    kind = stream_format(path)
    try:
        if kind == "npy":  # (array_header refuses a FIFO itself)
            shape, npy_dtype = array_header(path, path)
            return shape, str(npy_dtype)
        if kind == "tiff":
            import tifffile

            from imgconv.notes import warnings_as_notes
            from imgconv.opening import check_regular

            check_regular(path)  # a FIFO would block the open below
            # (what tifffile logs about the file is noted when the file is read)
            with warnings_as_notes(path, []), tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                h, w = int(page.imagelength), int(page.imagewidth)
                if tiff_orientation(page) in (5, 6, 7, 8):  # read turned upright
                    h, w = w, h
                samples = int(page.samplesperpixel)
                dtype = str(page.dtype)
            return ((h, w) if samples == 1 else (h, w, samples)), dtype
        if kind == "zarr":
            import zarr

            from imgconv.opening import check_store

            check_store(path)  # a FIFO among its files would block zarr's threads
            array = zarr.open_array(path, mode="r")
            return tuple(int(n) for n in array.shape), str(array.dtype)
    except Exception:  # the run says what is wrong with it
        return None
    return None


def wants_tiles(path: str, fmt: str, options: Options) -> bool:
    """Whether input ``path``, written as ``fmt``, takes the tiled path."""
    kind = stream_format(path)
    if kind == "zarr" or fmt == "zarr":
        return True
    if path == "-":
        return False
    if options.tiles is False or kind is None:
        return False
    if options.tiles:
        return True
    header = stream_header(path)
    if header is None or header[1] not in TILED_DTYPES:  # the in-memory path says why
        return False
    shape = header[0]
    pixels = shape[0] * shape[1]
    channels = shape[2] if len(shape) == 3 else 1
    return pixels * channels * 4 > options.memory_limit or pixels > options.max_pixels


def chunk_for(channels: int, memory_limit: int, threads: int) -> tuple[int, int]:
    """The chunks' (rows, columns): a band of :data:`CHUNK_STEP` rows (a TIFF output's row
    of tiles) at a time, split into chunks as wide as each thread's share of the memory
    limit allows, a multiple of 256 from 256 to :data:`MAX_CHUNK_WIDTH`."""
    share = max(memory_limit - BASE_BYTES, memory_limit // 4) / (4 * max(1, threads))
    width = int(share // (BYTES_PER_SAMPLE * max(1, channels) * CHUNK_STEP))
    return CHUNK_STEP, max(CHUNK_STEP, min(MAX_CHUNK_WIDTH, width // CHUNK_STEP * CHUNK_STEP))


def chunk_sides(options: Options, channels: int, threads: int) -> tuple[int, int]:
    """``chunk`` square, else :func:`chunk_for`'s."""
    if options.chunk:
        return options.chunk, options.chunk
    return chunk_for(channels, options.memory_limit, threads)


@dataclass(frozen=True)
class Plan:
    """How a tiled run goes: chunks, the halo each stage reads, and the memory it needs."""

    chunk: tuple[int, int]  # (rows, columns)
    grid: tuple[int, int]
    halos: tuple[tuple[str, int, int], ...]  # (stage, rows, columns) read beyond a chunk
    peak_bytes: int

    def lines(self) -> list[str]:
        rows, cols = self.grid
        out = [f"tiled: chunks of {self.chunk[0]}x{self.chunk[1]} pixels, a grid of "
               f"{rows}x{cols} = {rows * cols:,} chunks, computed a row of chunks at a time"]
        for stage, hy, hx in self.halos:
            out.append(f"  {stage}: a chunk reads {hy} rows and {hx} columns beyond itself")
        out.append(f"  estimated peak memory {self.peak_bytes / 2**20:,.0f} MiB")
        return out


def plan(pipeline: Pipeline, shape: tuple[int, ...], chunk: tuple[int, int],
         threads: int) -> Plan:
    """The tiled plan for an input of ``shape`` (H, W[, C])."""
    from imgconv.core.geometry import extent
    from imgconv.pipeline.stages import ConvStage

    h, w = shape[:2]
    channels = in_channels = shape[2] if len(shape) == 3 else 1
    halos: list[tuple[str, int, int]] = []
    size = (h, w)
    widest = channels
    for n, stage in enumerate(pipeline.stages, 1):
        if isinstance(stage, ActivationStage):
            continue
        if isinstance(stage, ConvStage):
            kh, kw = stage.members()[0].matrix.shape[:2]
            ey, ex = extent(kh, stage.dilation[0]), extent(kw, stage.dilation[1])
            name = f"stage {n} ({stage.spec})"
            widest = max(widest, stage.out_channels(channels))
            channels = stage.out_channels(channels)
        else:
            (kh, kw), (dy, dx), (sy, sx) = stage.size, stage.dilation, stage.stride or stage.size
            name = f"stage {n} ({stage.op} pool)"
            # a window starts each stride: what it reads past the next one's start
            ey, ex = max(0, extent(kh, dy) - sy) + 1, max(0, extent(kw, dx) - sx) + 1
        halos.append((name, max(0, ey - 1), max(0, ex - 1)))
        size = stage.out_shape(size)
    out_h, out_w = size
    rows, cols = chunk
    grid = (max(1, -(-out_h // rows)), max(1, -(-out_w // cols)))
    # two bands of input in flight (one computed while the other is written), the
    # decoded rows above and below, and each thread's chunk at work
    band = 5 * rows * w * in_channels
    work = threads * (rows + 64) * (cols + 64) * widest * BYTES_PER_SAMPLE
    # a chain of n stages keeps, for the next band, the rows of earlier stages its halos
    # reach again: 2d + 1 rows of float32 for the stage d from the end (files.bands)
    n = len(halos)
    kept = (n * n - 1) * rows * w * widest * 4
    return Plan(chunk, grid, tuple(halos), BASE_BYTES + band + work + kept)


#: ``progress(name, done, total)`` in the process that set it: a tiled image's chunks
ProgressHook = Callable[[str, int, int], None]
_progress: tuple[int, ProgressHook] | None = None
_progress_lock = threading.Lock()


def set_progress(hook: ProgressHook | None) -> None:
    """Report each tiled image's chunks to ``hook`` (in this process only; None: stop)."""
    global _progress
    with _progress_lock:
        _progress = None if hook is None else (os.getpid(), hook)


def _report(name: str, total: int) -> Callable[[int], None] | None:
    """A counter of ``name``'s chunks for the hook, or None when none is set here."""
    hook = _progress
    if hook is None or hook[0] != os.getpid():
        return None
    done = 0

    def step(blocks: int) -> None:
        nonlocal done
        done += blocks
        hook[1](name, done, total)

    return step


NEEDS_SCALE = ("{name}: this TIFF, .npy or .zarr is filtered in tiles, which needs the scale "
               "extra: pip install 'imgconv[scale]'")


def has_scale() -> bool:
    """Whether the scale extra (dask, zarr, imagecodecs) is installed, told without
    importing it."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None
               for name in ("dask", "zarr", "imagecodecs"))


def tiled_problem(name: str, shape: tuple[int, ...], task: Task, options: Options,
                  chunk: tuple[int, int], threads: int) -> str | None:
    """Why ``task``'s input of ``shape`` cannot be filtered in tiles as asked, or None: the
    run and ``dry_run`` say the same."""
    if not has_scale():
        return NEEDS_SCALE.format(name=name)
    layers = 1 + sum(not isinstance(s, ActivationStage) for s in options.pipeline.stages)
    count = -(-shape[0] // chunk[0]) * -(-shape[1] // chunk[1])
    if count * layers > MAX_CHUNKS:  # each stage is a layer of tasks, one a chunk
        return (f"{name}: chunks of {chunk[0]}x{chunk[1]} pixels cut the {shape[0]}x{shape[1]} "
                f"image into {count:,} chunks a stage, more than {MAX_CHUNKS // layers:,} for "
                f"{layers - 1} stage(s); use a larger `chunk`")
    if options.chunk:
        try:
            need = plan(options.pipeline, shape, chunk, threads).peak_bytes - BASE_BYTES
        except ValueError:
            return None  # the run says why
        if need > options.memory_limit:
            return (f"{name}: chunks of {chunk[0]}x{chunk[1]} pixels need about "
                    f"{need / 2**20:,.0f} MiB, more than `memory_limit` "
                    f"({options.memory_limit / 2**20:,.0f} MiB); use a smaller `chunk`")
    if task.fmt not in STREAM_FORMATS or task.target == "-":
        try:
            h, w = options.pipeline.shapes((shape[0], shape[1]))[-1] \
                if options.pipeline.stages else (shape[0], shape[1])
        except ValueError:
            return None  # the run says why
        if h * w > options.max_pixels:
            where = "to standard output" if task.target == "-" else f"as {task.fmt}"
            return (f"{name}: the {h}x{w} result (= {h * w:,} pixels) is too large to write "
                    f"{where}, more than the limit of {options.max_pixels:,} (`max_pixels`); "
                    "write a .tif, .npy or .zarr file, which are written by region")
    return None


def process_tiled(task: Task, options: Options, result: Result, name: str,
                  data: bytes | None = None) -> Callable[[Any], None] | None:
    """Filter ``task``'s input through the tiled path; raises ImgconvError.

    A TIFF, ``.npy`` or ``.zarr`` file is written here, band by band (None is returned);
    any other output (or standard output) gets its encoder, for the caller to deliver.
    """
    if not has_scale():
        raise ImageError(NEEDS_SCALE.format(name=name))
    import dask

    from imgconv.core.threads import get_threads, set_threads
    from imgconv.imageio import load
    from imgconv.notes import pool_warnings_as_notes, warnings_as_notes
    from imgconv.pipeline.render import clipping_note
    from imgconv.tiled import files, render

    threads = options.threads or get_threads()
    kind = stream_format(task.source.path)
    picture = None
    if kind is None:  # a picture that fits (a file, or standard input's ``data``), to .zarr
        picture = load(data if data is not None else task.source.path, gray=options.gray,
                       max_pixels=options.max_pixels)
    shape = picture.shape if picture is not None else input_shape(task.source.path)
    chunk = chunk_sides(options, shape[2] if shape is not None and len(shape) == 3 else 1,
                        threads)
    problem = None if shape is None else tiled_problem(name, shape, task, options, chunk,
                                                       threads)
    if problem is not None:
        raise ImageError(problem)
    with warnings_as_notes(name, result.notes):  # (tifffile's logs about the file too)
        source = (render.from_picture(picture, chunk) if picture is not None
                  else files.read(task.source.path, chunk=chunk, gray=options.gray))
    result.notes.extend(source.notes)
    result.input_shape = list(source.shape)
    pipeline = options.pipeline
    if task.pick is not None:
        pipeline = dataclasses.replace(pipeline, pick=task.pick)
    set_threads(1)  # dask's threads run the chunks: one core thread each
    try:
        with warnings_as_notes(name, result.notes), \
                pool_warnings_as_notes(name, result.notes, threads) as pool, \
                dask.config.set(scheduler="threads", pool=pool):
            out = render.render(source, pipeline, task.fmt, name, alpha=options.alpha,
                                depth=options.depth)  # (normalize's first pass runs here)
            result.output_shape = [int(n) for n in out.pixels.shape]
            if task.fmt in STREAM_FORMATS and task.target != "-":
                pixels = out.with_alpha()
                try:
                    files.write_bands(
                        pixels, task.target, overwrite=options.overwrite,
                        compression=options.compression or "deflate",
                        alpha=out.alpha is not None, fmt=task.fmt, threads=threads,
                        icc_profile=source.icc_profile,
                        progress=_report(name, pixels.numblocks[0] * pixels.numblocks[1]))
                except OSError as exc:  # the output's fault (a full disk): name it
                    raise ImageError(f"{task.target}: cannot write ({exc.strerror or exc})"
                                     ) from None
                write = None
            else:
                write = _encoder(out, task, options, source.icc_profile)
    finally:
        set_threads(options.threads)
        if kind is not None:
            files.forget(task.source.path)
    if out.how:
        result.notes.extend(clipping_note(pipeline, out.how, out.clipped_fraction(), name))
    if out.non_finite():
        result.notes.append(f"{name}: {out.non_finite():,} non-finite values (NaN/inf) in the "
                            "result; NaN written as 0")
    result.notes.extend(out.notes)
    if options.verify:
        result.notes.append(f"{name}: `verify` checks whole images in memory; not done on the "
                            "tiled path")
    return write


def _encoder(out: Any, task: Task, options: Options,
             icc_profile: bytes | None) -> Callable[[Any], None]:
    """A result small enough to hold (:func:`tiled_problem` checked it), computed whole: its
    encoder, a function of the stream it writes to (a PNG, JPEG, WebP or BMP file, or any
    format to standard output)."""
    import dask.base

    from imgconv.imageio import array_depth, encode

    pixels, alpha = dask.base.compute(out.pixels, out.alpha)  # type: ignore[no-untyped-call]
    depth = array_depth(pixels)

    def write(stream: Any) -> None:
        encode(pixels, task.fmt, stream, alpha=alpha, depth=depth, quality=options.quality,
               icc_profile=icc_profile, name="<stdout>" if task.target == "-" else task.target,
               compression=options.compression)

    return write
