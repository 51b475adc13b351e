"""How a 2-D correlation is computed: the strategy seam and the cost model.

Every strategy takes one image plane (any real dtype; it is converted tile by
tile), one kernel plane in the working dtype (already flipped for true
convolution), the geometry and the border mode, and returns the output plane in
the kernel's dtype. Optional keywords: ``out``, an array (any dtype, possibly a
strided view such as one channel of an (H, W, C) array) to write into, and
``post``, a function applied in place to each finished tile before it is
stored (see :func:`imgconv.core.conv.correlate_into`).

=============  ==========================================================  ==================
strategy       how                                                         cost per pixel
=============  ==========================================================  ==================
``direct``     shift-and-accumulate of the 2-D kernel over row tiles        ~ non-zero taps
``separable``  ``r`` pairs of 1-D passes or band-matrix products            ~ r·(kh + kw)
``fft``        overlap-save over 2-D blocks with scipy.fft                  ~ log of block size
=============  ==========================================================  ==================

All three work on tiles that fit the CPU cache (``direct`` and ``separable``
on row tiles, ``fft`` on 2-D blocks), skip zero taps and
multiplications by ±1 (:mod:`imgconv.core.taps`), compute only the rows and
columns a stride keeps (except ``fft``, which computes stride 1 and subsamples)
and run bands of tiles on the thread pool (:mod:`imgconv.core.threads`). The
public API never names a strategy: :func:`choose_strategy` picks the cheapest,
and the tests run every registered strategy against scipy.ndimage.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from imgconv.core import jit
from imgconv.core.geometry import Geometry
from imgconv.core.padding import source_indices
from imgconv.core.taps import (
    Program,
    column_program,
    direct_program,
    exact_rtol,
    factors,
    low_rank,
    rank_at_most,
    row_program,
    separable_programs,
)
from imgconv.core.threads import blas_single_threaded
from imgconv.core.tiles import Padder, Post, accumulator, run_bands, store, tile_grid

#: Bytes of one tile buffer: a few of them (input rows, partial sums, output)
#: should stay in a core's L2 cache between the passes of one tile. Each tile
#: also costs some Python per pass, run under the GIL, so with several threads
#: small tiles queue for it: larger tiles won, within L2 (the measurements:
#: docs/performance.md, "How the constants were set").
TILE_BYTES = 768 * 1024

#: ``direct``'s tiles are this many times larger when the compiled path is on
#: (:mod:`imgconv.core.jit`): it streams a tile one row at a time, so the tile
#: need not stay in the cache, and larger tiles spend less Python per pixel.
#: (``separable`` keeps its tiles: its matrix products and its per-tile
#: fallback round by tile, and its bits must not depend on the path.) Twice
#: was faster, four times no faster and dearer in memory (docs/performance.md,
#: "How the constants were set").
JIT_TILE_SCALE = 2


def l2_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """The size of one core's L2 cache as Linux reports it, else None.

    >>> l2_cache_bytes(Path("/no/such/folder")) is None
    True
    """
    try:
        indexes = sorted(root.glob("index*"))
    except OSError:
        return None
    for index in indexes:
        try:
            if (index / "level").read_text().strip() == "2":
                text = (index / "size").read_text().strip().upper()
                unit = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
                return int(text.rstrip("KM")) * unit
        except (OSError, ValueError):
            continue
    return None


def fft_block(l2_bytes: int | None) -> tuple[int, int]:
    """Padded rows and columns of one FFT block for a core with this much L2.

    Larger blocks waste fewer overlapping rows and columns, but the block, its
    spectrum and the kernel's must stay near the core through both transforms.
    Measured with a random 31x31 kernel on 12 MP float32 with 2 threads: with
    2 MB of L2 (Xeon) 384x512 was fastest (13 ns a pixel, against 26 for
    full-width 256-row tiles); with 512 KB (EPYC) 256x256 (141 ms against
    172 for 384x512, interleaved). Unknown caches get the larger blocks.

    >>> fft_block(2 << 20), fft_block(512 << 10), fft_block(None)
    ((384, 512), (256, 256), (384, 512))
    """
    return (256, 256) if l2_bytes is not None and l2_bytes < (1 << 20) else (384, 512)


#: Padded input rows and columns of one FFT block (before rounding up to a
#: fast FFT length), for this machine's cache.
FFT_TILE_ROWS, FFT_TILE_COLS = fft_block(l2_cache_bytes())

#: The cost model's weights, in element passes per output pixel, measured on
#: a 12 MP float32 image (benchmarks/bench_core.py): one FFT tile costs about
#: ``FFT_COST * log2(size)`` passes per padded pixel; converting input rows
#: into the tile about ``COPY_COST``.
FFT_COST = 2.5
COPY_COST = 1.0

#: With the compiled path on, ``direct`` sums a tile's taps in registers and
#: stores each output once, so a step costs a fraction of a pass: one pass
#: plus ``JIT_STEP_COST`` per step, fitted so that compiled direct takes dense
#: kernels up to 9x9 and the gaussians up to 5x5, the FFT dense 11x11 and up
#: (the fit: docs/performance.md, "How the constants were set").
JIT_STEP_COST = 0.15


#: On planes of at most :data:`SMALL_MAX_PIXELS` outputs, the cost model
#: also counts the Python around the passes, in element passes: one numpy
#: call costs about ``CALL_PIXELS``, and each strategy's set-up (buffers,
#: border strips, matrix bands, the spectrum's look-up) ``SETUP_PIXELS``,
#: measured over 28x28 and 64x64 planes against ``small`` (docs/performance.md,
#: "How the constants were set").
CALL_PIXELS = 4000
SETUP_PIXELS = {"small": 0, "direct": 60_000, "separable": 100_000, "fft": 60_000}
#: ... except the compiled ``direct`` of a plane it reads in place (in the working
#: dtype, rows contiguous), which copies no padded tile and whose set-up is one
#: compiled call and its index maps' check: fitted on 28x28 to 256x256 planes
#: against ``small`` (docs/performance.md, "How the constants were set").
JIT_DIRECT_SETUP_PIXELS = 12_000


class Strategy(Protocol):
    """``(plane, kernel, geom, mode, cval, *, out=None, post=None) -> out plane``."""

    def __call__(
        self,
        plane: NDArray[Any],
        kernel: NDArray[Any],
        geom: Geometry,
        mode: str,
        cval: float,
        *,
        out: NDArray[Any] | None = None,
        post: Post | None = None,
    ) -> NDArray[Any]: ...


def _output(out: NDArray[Any] | None, geom: Geometry, dtype: np.dtype[Any]) -> NDArray[Any]:
    if out is None:
        return np.empty(geom.out_shape, dtype=dtype)
    if out.shape != geom.out_shape:
        raise ValueError(f"out must have shape {geom.out_shape}, got {out.shape}")
    return out


def readable_in_place(plane: NDArray[Any], dtype: np.dtype[Any]) -> bool:
    """Whether the taps may read ``plane``'s rows directly instead of a converted tile copy.

    Only for rows that are contiguous and already in the working dtype: every
    tap reads its source once, so reading a uint8 image or one channel of an
    interleaved (H, W, C) image in place would convert or gather it once per
    tap; one cast copy into a cache-resident tile is faster (on a 12 MP RGB
    uint8 image, sobel-x 195 -> 155 ms; diagonal on float32 RGB 330 -> 200 ms).
    """
    return plane.dtype == dtype and plane.strides[1] == dtype.itemsize


def tile_rows(width: int, itemsize: int, stride: int, compiled: bool = False) -> int:
    """Output rows per tile so that one tile buffer is about :data:`TILE_BYTES`.

    With ``compiled`` (``direct`` on the compiled path), :data:`JIT_TILE_SCALE`
    times that: ``direct``'s sums do not depend on the tile grid, so neither do
    its bits. The cost model prices both paths with the numpy path's tiles.

    An int16 tile (exact sums of an 8-bit image) so gets twice the rows of a
    float32 one: its passes are so quick that with several threads the Python
    between them, under the GIL, is what costs. On the 2-core Xeon of the
    README's tables, a 12 MP uint8 plane through sobel-x, mapped to uint8 by
    a ``post`` that takes int16 tiles, took 10.5-11.1 ms against 14.9 with
    float32-sized tiles (the diagonal 10.5-10.7 against 12.4-12.6), and
    ``imgconv apply`` 0.28 s against 0.29. A ``post`` that wants float32 gets
    the tile converted into a buffer twice a float32 tile's size.
    """
    budget = TILE_BYTES * (JIT_TILE_SCALE if compiled else 1)
    return max(1, budget // max(1, width * itemsize * stride))


def direct(
    plane: NDArray[Any],
    kernel: NDArray[Any],
    geom: Geometry,
    mode: str,
    cval: float,
    *,
    out: NDArray[Any] | None = None,
    post: Post | None = None,
) -> NDArray[Any]:
    """Shift and accumulate: one strided view of the padded tile per non-zero tap.

    Memory is the output plus, per thread, a padded input tile and at most two
    tile-sized buffers, whatever the kernel size (no im2col copy). Stride is
    taken by the views, so only the outputs that are kept are computed.
    """
    dtype = kernel.dtype
    result = _output(out, geom, dtype)
    oh, ow = geom.out_shape
    (sy, sx), (ey, ex) = geom.stride, geom.extent
    padder = Padder(plane, geom, mode, cval)
    program = direct_program(kernel, geom.dilation)
    compiled = jit.enabled()
    # (a grid of one tile either way: no buffer larger than the plane)
    n = min(oh, tile_rows(padder.width, dtype.itemsize, sy, compiled))
    # On the compiled path the kernel reads the image's rows where they are,
    # through the border mode's index maps: no padded tile at all.
    mapped = (padder.mapped(ow, ex, dtype)
              if compiled and sx == 1 and readable_in_place(plane, dtype) else None)
    # Output columns [cl, cr) read only image columns. In tiles whose rows are
    # all image rows, the taps of those columns are views of the image itself
    # (no padded copy: a whole pass saved); only the few border columns on
    # either side go through a narrow padded strip.
    left, w = geom.pads[2], plane.shape[1]
    cl = min(ow, -(-left // sx))
    cr = max(cl, min(ow, (left + w - ex) // sx + 1))
    in_place = readable_in_place(plane, dtype) and cr > cl and 2 * (cr - cl) >= ow
    # (not a window of a wider array, whose other columns are not the image's)
    whole_rows = plane.flags.c_contiguous
    # the strip: padded columns [0, lw) for outputs [0, cl), then from cr * sx
    # to the end for outputs [cr, ow); outputs between the two are discarded.
    # With cr == ow and a column stride wider than the kernel, cr * sx is past
    # the padded width: the right-hand part is then empty.
    lo = -(-max(0, (cl - 1) * sx + ex) // sx) if cl else 0
    lw = lo * sx
    right = min(cr * sx, padder.width)
    strip_cols = lw + padder.width - right
    strip_out = lo + ow - cr

    def band(tiles: Iterable[tuple[int, int]]) -> None:
        tile = np.empty(((n - 1) * sy + ey, max(padder.width, strip_cols)), dtype)
        acc_buf = np.empty((n, ow), dtype)
        scratch = (np.empty((n, max(ow, strip_out)), dtype) if program.needs_scratch()
                   else None)
        edge = np.empty((n, strip_out), dtype) if in_place else None
        for r0, r1 in tiles:
            m = r1 - r0
            rows_in = (m - 1) * sy + ey
            dst = result[r0:r1]
            acc = accumulator(acc_buf[:m], dst, post)
            if mapped is not None and jit.run(program.steps, mapped._replace(p0=r0 * sy),
                                              (sy, 1), acc):
                pass  # the compiled kernel summed the whole tile, borders too
            elif edge is not None and padder.inside(r0 * sy, rows_in):
                p0 = r0 * sy
                image = padder.plane[p0 - padder.top : p0 - padder.top + rows_in,
                                     cl * sx - left :]
                # spans: what lies between the rows is the image's and the
                # output's own border columns, written below
                program.run([image], (m, cr - cl), (sy, sx), acc[:, cl:cr],
                            None if scratch is None else scratch[:m, cl:cr],
                            spans=whole_rows and acc.flags.c_contiguous)
                if strip_out:
                    padder.fill(tile, p0, rows_in, 0, lw)
                    padder.fill(tile[:, lw:], p0, rows_in, right, padder.width)
                    part = edge[:m]
                    program.run([tile[:rows_in, :strip_cols]], (m, strip_out), (sy, sx), part,
                                None if scratch is None else scratch[:m, :strip_out])
                    acc[:, :cl] = part[:, :cl]
                    acc[:, cr:] = part[:, lo:]
            else:
                padder.fill(tile, r0 * sy, rows_in)
                program.run([tile[:rows_in]], (m, ow), (sy, sx), acc,
                            None if scratch is None else scratch[:m, :ow])
            store(acc, dst, post)

    run_bands(tile_grid(oh, n), band, oh * ow)
    return result


#: Output pixels up to which the cost model considers ``small``: below the
#: thread pool's threshold (:data:`imgconv.core.tiles.PARALLEL_MIN_PIXELS`),
#: so a plane that size is computed on the calling thread by every strategy,
#: and a whole padded float32 copy of it (256 KiB) stays in the L2 cache.
#: Larger planes (``small`` named by a test) are cut into bands of about this
#: many pixels, on the thread pool.
SMALL_MAX_PIXELS = 1 << 16

#: Output pixels up to which the cost model offers ``small`` (in bands of
#: :data:`SMALL_MAX_PIXELS` beyond that) and counts the Python around the
#: passes. Its bands of pass-by-pass 1-D programs stay in L2 between passes,
#: which beat ``separable`` at 512x512 and no longer at 1024x1024. Not on the
#: compiled path, whose ``direct`` sums a tile in one call (docs/performance.md,
#: "How the constants were set").
SMALL_COST_PIXELS = 1 << 18

#: Padded planes up to this many places are gathered by one fancy index
#: through cached index maps (a few microseconds); larger ones are filled
#: by a :class:`~imgconv.core.tiles.Padder` (a slice copy of the interior,
#: several times faster per pixel).
GATHER_MAX_PIXELS = 1 << 14


def small(
    plane: NDArray[Any],
    kernel: NDArray[Any],
    geom: Geometry,
    mode: str,
    cval: float,
    *,
    out: NDArray[Any] | None = None,
    post: Post | None = None,
) -> NDArray[Any]:
    """Tap programs over the whole padded plane at once: no tile grid, no pool, no products.

    For planes of a few thousand pixels (a 28x28 digit, a 64x64 patch) the
    arithmetic takes microseconds, and what the other strategies spend around
    it (tile buffers, border strips, matrix products, the pool's bookkeeping)
    takes more. Here the padded plane is one copy, through the border mode's
    cached index maps, and :func:`small_programs` run over it once: the
    direct program (one pass per group of taps), or for a kernel of low rank
    whose 1-D programs make fewer passes, the vertical programs and then the
    summed horizontal one (``separable``'s passes, without its matrix
    products). Both are tap programs, so the bits are the same on either
    executor, and every output's sum is the same whatever the plane's size,
    so a stride subsamples exactly.

    The cost model offers it up to :data:`SMALL_MAX_PIXELS` output pixels;
    a larger plane is cut into bands of rows of about that size (on the
    thread pool), each padded and computed the same way.
    """
    dtype = kernel.dtype
    result = _output(out, geom, dtype)
    oh, ow = geom.out_shape
    compiled = jit.enabled()
    k = np.ascontiguousarray(kernel)
    programs, flat = _small_setup(k.tobytes(), (k.shape[0], k.shape[1]), k.dtype.str, geom,
                                  mode)
    direct_out = post is None and result.dtype == dtype and result.strides[1] == dtype.itemsize
    if flat is not None:
        # the usual small call: one gather, the programs, and nothing else
        padded = plane.take(flat)
        if padded.dtype != dtype:
            padded = padded.astype(dtype)
        acc = result if direct_out else np.empty((oh, ow), dtype)
        _run_small(programs, padded, oh, ow, geom.stride, acc, compiled)
        store(acc, result, post)
        return result
    sy, ey = geom.stride[0], geom.extent[0]
    whole = oh * ow <= SMALL_MAX_PIXELS
    n = oh if whole else max(1, SMALL_MAX_PIXELS // ow)
    padder = None if whole and _gathered(geom) else Padder(plane, geom, mode, cval)

    def band(tiles: Iterable[tuple[int, int]]) -> None:
        for r0, r1 in tiles:
            m = r1 - r0
            rows_in = (m - 1) * sy + ey
            if padder is None:
                padded = _gather_padded(plane, geom, mode, cval, dtype)
            else:
                padded = np.empty((rows_in, padder.width), dtype)
                padder.fill(padded, r0 * sy, rows_in)
            dst = result[r0:r1]
            acc = dst if direct_out else np.empty((m, ow), dtype)
            _run_small(programs, padded, m, ow, geom.stride, acc, compiled)
            store(acc, dst, post)

    if whole:  # (not even the pool's bookkeeping)
        band([(0, oh)])
    else:
        run_bands(tile_grid(oh, n), band, oh * ow)
    return result


def _run_small(
    programs: tuple[Program, ...], padded: NDArray[Any], m: int, ow: int,
    stride: tuple[int, int], acc: NDArray[Any], compiled: bool,
) -> None:
    """Run :func:`small_programs` over ``padded`` into ``acc`` (``m`` rows of ``ow``)."""
    sy, sx = stride
    dtype = acc.dtype
    *cols, last = programs
    sources: list[NDArray[Any]] | NDArray[Any] = [padded]
    if cols:  # the vertical passes, then the horizontal one over their partial sums
        width = padded.shape[1]
        partial = np.empty((len(cols), m, width), dtype)
        scratch = (np.empty((m, width), dtype) if any(p.needs_scratch() for p in cols)
                   else None)
        for program, buf in zip(cols, partial, strict=True):
            program.run([padded], (m, width), (sy, 1), buf, scratch, compiled=compiled)
        sources, stride = partial, (1, sx)
    scratch = np.empty((m, ow), dtype) if last.needs_scratch() else None
    last.run(sources, (m, ow), stride, acc, scratch, compiled=compiled)


@functools.lru_cache(maxsize=256)
def _small_setup(
    data: bytes, shape: tuple[int, int], dtype: str, geom: Geometry, mode: str
) -> tuple[tuple[Program, ...], NDArray[np.intp] | None]:
    """``small``'s programs, and the gather map when the plane is gathered whole, cached.

    The map (:func:`_gather_map`) when the plane has at most
    :data:`SMALL_MAX_PIXELS` outputs and :data:`GATHER_MAX_PIXELS` padded
    places, and is padded by an index map (not ``constant``); else None.
    """
    programs = _small_programs_cached(data, shape, dtype, geom.dilation)
    (oh, ow), (sy, sx), (ey, ex) = geom.out_shape, geom.stride, geom.extent
    rows, cols = (oh - 1) * sy + ey, (ow - 1) * sx + ex
    (h, w), top, left = geom.in_shape, geom.pads[0], geom.pads[2]
    if (mode == "constant" or oh * ow > SMALL_MAX_PIXELS or not _gathered(geom)
            or (top == 0 and left == 0 and rows <= h and cols <= w)):
        return programs, None
    return programs, _gather_map(h, w, top, rows, left, cols, mode)


@functools.lru_cache(maxsize=256)
def _small_programs_cached(data: bytes, shape: tuple[int, int], dtype: str,
                           dilation: tuple[int, int]) -> tuple[Program, ...]:
    kernel = np.frombuffer(data, dtype=dtype).reshape(shape)
    program = direct_program(kernel, dilation)
    if kernel.dtype.kind != "f":  # exact int16 weights: their bound is the direct sum's
        return (program,)
    cols, row = separable_programs(kernel, dilation)
    if cols and sum(p.cost() for p in cols) + row.cost() < program.cost():
        return (*cols, row)
    return (program,)


def small_programs(kernel: NDArray[Any], dilation: tuple[int, int]) -> tuple[Program, ...]:
    """What ``small`` runs: ``(direct program,)`` or ``(*vertical programs, horizontal)``.

    The separable passes when they are fewer (box, sobel, gaussians: 4 passes
    against 6 for sobel-x, 29 against 225 for box 15x15), else the direct
    sum. Chosen by the kernel alone, never the image, and cached.
    """
    k = np.ascontiguousarray(kernel)
    return _small_programs_cached(k.tobytes(), (k.shape[0], k.shape[1]), k.dtype.str,
                                  (int(dilation[0]), int(dilation[1])))


def _gathered(geom: Geometry) -> bool:
    """Whether ``small`` gathers the padded plane by one fancy index (:data:`GATHER_MAX_PIXELS`)."""
    (oh, ow), (sy, sx), (ey, ex) = geom.out_shape, geom.stride, geom.extent
    return ((oh - 1) * sy + ey) * ((ow - 1) * sx + ex) <= GATHER_MAX_PIXELS


def _gather_padded(
    plane: NDArray[Any], geom: Geometry, mode: str, cval: float, dtype: np.dtype[Any]
) -> NDArray[Any]:
    """The padded rows and columns the output reads, as one array of ``dtype``.

    The plane itself (or a cast copy) when it needs no padding.
    """
    h, w = plane.shape
    top, _, left, _ = geom.pads
    (oh, ow), (sy, sx), (ey, ex) = geom.out_shape, geom.stride, geom.extent
    rows, cols = (oh - 1) * sy + ey, (ow - 1) * sx + ex
    if top == 0 and left == 0 and rows <= h and cols <= w:
        inner = plane[:rows, :cols]
        return inner if inner.dtype == dtype else inner.astype(dtype)
    if mode == "constant":
        padded = np.full((rows, cols), cval, dtype)
        r0, r1 = min(top, rows), min(top + h, rows)
        c0, c1 = min(left, cols), min(left + w, cols)
        if r0 < r1 and c0 < c1:
            np.copyto(padded[r0:r1, c0:c1], plane[r0 - top : r1 - top, c0 - left : c1 - left],
                      casting="unsafe")
        return padded
    # (take: 1-2 us for a 30x30 plane, where plane[rows[:, None], cols] took 8)
    padded = plane.take(_gather_map(h, w, top, rows, left, cols, mode))
    return padded if padded.dtype == dtype else padded.astype(dtype)


@functools.lru_cache(maxsize=256)
def _gather_map(
    h: int, w: int, top: int, rows: int, left: int, cols: int, mode: str
) -> NDArray[np.intp]:
    """The flat (C-order) index into the plane of every padded place read, cached."""
    row_map = source_indices(h, top, max(0, rows - top - h), mode)[:rows]
    col_map = source_indices(w, left, max(0, cols - left - w), mode)[:cols]
    flat = row_map[:, None] * w + col_map
    flat.flags.writeable = False
    return flat


def _is_identity(program: Program) -> bool:
    """A single tap of weight 1: the pass would only copy its source."""
    return (len(program.groups) == 1 and program.groups[0].size == 1
            and program.groups[0].weight == 1.0 and bool(program.groups[0].plus))


def separable(
    plane: NDArray[Any],
    kernel: NDArray[Any],
    geom: Geometry,
    mode: str,
    cval: float,
    *,
    out: NDArray[Any] | None = None,
    post: Post | None = None,
) -> NDArray[Any]:
    """Rank-``r`` kernels as ``r`` vertical 1-D passes and one summed horizontal pass.

    The kernel is split exactly into ``sum_k outer(u_k, v_k)`` by
    :func:`imgconv.core.taps.low_rank`; a rank-1 kernel (box, gaussian, sobel)
    costs ``kh + kw`` passes instead of ``kh * kw``. The vertical passes run
    first, on tile rows only (never on the rows a tall kernel overlaps), and the
    horizontal pass takes the column stride. Any kernel works: a full-rank one
    simply has ``r = min(kh, kw)`` pairs, which the cost model avoids.

    For a rank-1 kernel whose 1-D filters cost several passes (gaussian 5x5,
    box 15x15), a pass is replaced by BLAS matrix products with band matrices
    (:data:`GEMM_ROWS` output rows, :data:`GEMM_COLS`-column blocks), which
    read each input once. Zeros of the band multiply every input, so a tile
    whose result is not finite is recomputed pass by pass; a column stride
    takes every ``sx``-th column of the products, so results stay exactly the
    stride-1 ones.
    """
    dtype = kernel.dtype
    result = _output(out, geom, dtype)
    oh, ow = geom.out_shape
    (sy, sx), ey = geom.stride, geom.extent[0]
    pairs = factors(kernel)
    padder = Padder(plane, geom, mode, cval)
    width = padder.width
    col_programs, row = separable_programs(kernel, geom.dilation)
    # the numpy path's tiles on both paths: the GEMM bands and the finiteness
    # fallback below work tile by tile, so the tile grid is part of the rounding
    # (capped at the plane's rows: the same grid of one tile, smaller buffers)
    n = min(oh, tile_rows(width, dtype.itemsize, sy))
    # (exact_int16 never gives an integer kernel that would take the products)
    bands, blocks = _gemm_matrices(kernel, geom.dilation, sy, geom.extent[1])
    # with a column stride the products still give every column, which is
    # subsampled: the same numbers as the stride-1 call, exactly
    ow1 = (ow - 1) * sx + 1
    nb = -(-ow1 // GEMM_COLS)
    # the row products read GEMM_COLS columns past the last block: zeros
    padded_width = max(width, (nb + 1) * GEMM_COLS)

    # Tiles inside the image skip the padded tile: the vertical passes read the
    # image rows in place and the border columns are copied afterwards, which
    # saves a whole pass over the image.
    from_image = padder.columns_from_interior and readable_in_place(plane, dtype)
    c0, c1 = padder.c0, padder.c1
    # On the numpy executor such tiles keep the partial sums of the image
    # columns only, at the image's own pitch, so that every pass can run over
    # 1-D spans of rows (Program.run's spans); the few border outputs come
    # from a strip of the partial sums gathered through the border mode.
    strip = (_PartialStrip(padder, ow, geom.extent[1])
             if from_image and geom.stride == (1, 1) and bands is None and blocks is None
             and not jit.enabled() else None)

    def band(tiles: Iterable[tuple[int, int]]) -> None:
        tile = np.empty(((n - 1) * sy + ey, width), dtype)
        partial = np.zeros((len(pairs), n, padded_width), dtype)
        col_scratch = (np.empty((n, width), dtype)
                       if any(p.needs_scratch() for p in col_programs) else None)
        acc_buf = np.empty((n, max(ow, nb * GEMM_COLS)), dtype)
        row_scratch = (np.empty((n, max(ow, nb * GEMM_COLS)), dtype)
                       if row.needs_scratch() or blocks is not None else None)
        if strip is not None:
            image_sums = np.empty((len(pairs), n, c1 - c0), dtype)
            edges = np.empty((len(pairs), n, len(strip.columns)), dtype)
            edge_out = np.empty((n, strip.outputs), dtype)
            strip_scratch = (np.empty((n, max(ow, strip.outputs)), dtype)
                             if row.needs_scratch() else None)

        def vertical(source: NDArray[Any], m: int, cols: slice) -> bool:
            """The vertical passes; whether the partial sums are known to be finite."""
            if bands is not None and _gemm_columns(bands, source, m, sy, ey,
                                                   partial[:, :, cols]):
                return True
            for program, buf in zip(col_programs, partial, strict=True):
                program.run([source], (m, buf[:, cols].shape[1]), (sy, 1), buf[:m, cols],
                            None if col_scratch is None else col_scratch[:m, cols])
            return False

        for r0, r1 in tiles:
            m = r1 - r0
            rows_in = (m - 1) * sy + ey
            # the partial sums as one (pairs, m, width) array: one source per pair
            sources: list[NDArray[Any]] | NDArray[Any] = partial[:, :m]
            finite = False
            if strip is not None and padder.inside(r0, rows_in):
                image = padder.rows(r0, rows_in)
                for program, buf in zip(col_programs, image_sums, strict=True):
                    program.run([image], (m, c1 - c0), (1, 1), buf[:m],
                                None if col_scratch is None else col_scratch[:m, : c1 - c0],
                                compiled=False, spans=strip.whole_rows)
                dst = result[r0:r1]
                acc = accumulator(acc_buf[:m, :ow], dst, post)
                strip.run(row, image_sums[:, :m], acc, edges[:, :m], edge_out[:m],
                          None if strip_scratch is None else strip_scratch[:m])
                store(acc, dst, post)
                continue
            if from_image and padder.inside(r0 * sy, rows_in):
                finite = vertical(padder.rows(r0 * sy, rows_in), m, slice(c0, c1))
                for buf in partial:
                    padder.extend_columns(buf[:m])
            else:
                padder.fill(tile, r0 * sy, rows_in)
                if bands is None and blocks is None and all(
                        _is_identity(p) for p in col_programs):
                    # each u is a single 1: the tile rows are the pass (the row
                    # products read the partial sums, so with them it still runs)
                    sources = [tile[d : d + sy * (m - 1) + 1 : sy] for d in (
                        program.groups[0].plus[0][1] for program in col_programs)]
                else:
                    finite = vertical(tile[:rows_in], m, slice(0, width))
            dst = result[r0:r1]
            acc = accumulator(acc_buf[:m, :ow], dst, post)
            if blocks is not None and row_scratch is not None and (
                    finite or bool(np.isfinite(partial[:, :m, :width].sum()))):
                _gemm_rows(blocks, partial[:, :m], acc_buf[:m, : nb * GEMM_COLS],
                           row_scratch[:m, : nb * GEMM_COLS])
                acc = acc_buf[:m, : ow1 : sx]
            else:
                row.run(sources, (m, ow), (1, sx), acc,
                        None if row_scratch is None else row_scratch[:m, :ow])
            store(acc, dst, post)

    if bands is None and blocks is None:
        run_bands(tile_grid(oh, n), band, oh * ow)
    else:  # no BLAS threads inside ours (or beside the caller's one)
        with blas_single_threaded():
            run_bands(tile_grid(oh, n), band, oh * ow)
    return result


class _PartialStrip:
    """Separable's horizontal pass over the partial sums of the image columns only.

    The interior outputs, whose taps read only image columns, run over the
    partial sums where they are (as 1-D spans when the output is whole rows:
    the places between the rows are then its own border columns, computed too
    and overwritten; the vertical passes, when the image is whole rows); the border
    outputs run over a narrow strip of partial sums gathered through the
    border mode's column map, as ``direct``'s border strip does for pixels.
    Column stride 1.
    """

    def __init__(self, padder: Padder, ow: int, ex: int) -> None:
        c0, c1, width = padder.c0, padder.c1, padder.width
        #: the image is whole rows, not a window of a wider array (the vertical
        #: passes' spans stay in it)
        self.whole_rows = bool(padder.plane.flags.c_contiguous)
        # each padded column as a column of the partial sums (image columns c0..c1)
        at = np.empty(width, dtype=np.intp)
        at[:c0] = padder.left_cols - padder.src_c0
        at[c0:c1] = np.arange(c1 - c0)
        at[c1:] = padder.right_cols - padder.src_c0
        self.cl = cl = min(ow, c0)
        self.cr = cr = max(cl, min(ow, c1 - ex + 1))
        # outputs [0, cl) from padded columns [0, lw); [cr, ow) from [cr, width)
        self.lo = lo = cl - 1 + ex if cl else 0
        self.columns = np.r_[at[:lo], at[cr:width]]
        self.outputs = lo + ow - cr

    def run(self, row: Program, sums: NDArray[Any], acc: NDArray[Any], edges: NDArray[Any],
            edge_out: NDArray[Any], scratch: NDArray[Any] | None) -> None:
        """``acc``: the row filter over ``sums``, the partial sums of a tile's image columns.

        ``scratch`` has at least :attr:`outputs` columns, as ``edge_out`` does.
        """
        m = acc.shape[0]
        cl, cr, lo = self.cl, self.cr, self.lo
        if cr > cl:
            # (the sources are the tile's own partial sums: only the output matters)
            row.run(sums, (m, cr - cl), (1, 1), acc[:, cl:cr],
                    None if scratch is None else scratch[:, cl:cr], compiled=False,
                    spans=acc.flags.c_contiguous)
        if self.outputs:
            np.take(sums, self.columns, axis=2, out=edges)
            row.run(edges, (m, self.outputs), (1, 1), edge_out,
                    None if scratch is None else scratch[:, : self.outputs], compiled=False)
            acc[:, :cl] = edge_out[:, :cl]
            acc[:, cr:] = edge_out[:, lo:]


@functools.lru_cache(maxsize=64)
def _gemm_matrices_cached(
    data: bytes, shape: tuple[int, int], dtype: str, dilation: tuple[int, int], sy: int, ex: int
) -> tuple[NDArray[Any] | None, tuple[NDArray[Any], NDArray[Any]] | None]:
    kernel = np.frombuffer(data, dtype=dtype).reshape(shape)
    pairs = factors(kernel)
    col_programs, row = separable_programs(kernel, dilation)
    bands = (_column_matrices(pairs, dilation[0], sy) if _column_gemm(col_programs)
             else None)
    blocks = _row_matrices(pairs, dilation[1]) if _row_gemm(row, len(pairs), ex) else None
    for mat in (bands, *(blocks or ())):
        if mat is not None:
            mat.flags.writeable = False  # shared by every thread and call
    return bands, blocks


def _gemm_matrices(
    kernel: NDArray[Any], dilation: tuple[int, int], sy: int, ex: int
) -> tuple[NDArray[Any] | None, tuple[NDArray[Any], NDArray[Any]] | None]:
    """``separable``'s band matrices for the vertical and horizontal products, or None each.

    Cached per kernel, dilation and row stride: building them is Python loops.
    """
    k = np.ascontiguousarray(kernel)
    return _gemm_matrices_cached(k.tobytes(), (k.shape[0], k.shape[1]), k.dtype.str,
                                 (int(dilation[0]), int(dilation[1])), int(sy), int(ex))


#: Output rows per matrix product of the vertical passes: the band matrix is
#: ``GEMM_ROWS x (GEMM_ROWS - 1) * sy + ey``, so the multiply-adds per output
#: pixel grow with it; 8 was fastest on the benchmark machine.
GEMM_ROWS = 8


#: Output columns per block of the horizontal matrix products (stride 1 only):
#: each block is ``GEMM_COLS`` columns of partial sums times a
#: ``GEMM_COLS x GEMM_COLS`` band matrix, plus the next block's first
#: ``ex - 1`` columns times a small matrix.
GEMM_COLS = 16


def _row_matrices(
    pairs: tuple[tuple[NDArray[Any], NDArray[Any]], ...], dx: int
) -> tuple[NDArray[Any], NDArray[Any]]:
    """``(H0, H1)``, shapes ``(r, B, B)`` and ``(r, ex - 1, B)``, for ``B = GEMM_COLS``.

    Output column ``c`` of a block is ``sum_j v[j] * p[c + j * dx]``: the taps
    inside the block are ``H0``, those in the next block's first columns ``H1``.
    """
    kw = len(pairs[0][1])
    ex = (kw - 1) * dx + 1
    h0 = np.zeros((len(pairs), GEMM_COLS, GEMM_COLS), pairs[0][1].dtype)
    h1 = np.zeros((len(pairs), max(1, ex - 1), GEMM_COLS), pairs[0][1].dtype)
    for k, (_, v) in enumerate(pairs):
        for c in range(GEMM_COLS):
            for j, weight in enumerate(v):
                at = c + j * dx
                if at < GEMM_COLS:
                    h0[k, at, c] = weight
                else:
                    h1[k, at - GEMM_COLS, c] = weight
    return h0, h1


def _gemm_rows(
    blocks: tuple[NDArray[Any], NDArray[Any]],
    partial: NDArray[Any],
    acc: NDArray[Any],
    scratch: NDArray[Any],
) -> None:
    """``acc = sum_k v_k`` applied along the rows of ``partial[k]``, by matrix products.

    ``acc`` and ``scratch`` have a whole number of blocks of columns; the
    partial sums have one block more (zeros past the padded width), which the
    last block's taps reach into.
    """
    h0, h1 = blocks
    m, width = acc.shape
    nb, b, spill = width // GEMM_COLS, GEMM_COLS, h1.shape[1]
    out = acc.reshape(m, nb, b)
    tmp = scratch.reshape(m, nb, b)
    for k in range(len(h0)):
        inner = partial[k, :, : nb * b].reshape(m, nb, b)
        after = partial[k, :, b : nb * b + b].reshape(m, nb, b)[:, :, :spill]
        np.matmul(inner, h0[k], out=out if k == 0 else tmp)
        if k:
            np.add(out, tmp, out=out)
        np.matmul(after, h1[k], out=tmp)
        np.add(out, tmp, out=out)


#: Passes a 1-D filter must cost before a matrix product replaces them, and
#: what the products cost in the same units, measured with benchmarks/bench_core.py
#: (3-tap filters are faster as passes; docs/performance.md, "How the constants
#: were set").
GEMM_MIN_PASSES = 4
GEMM_COLUMN_COST = 2.0
GEMM_ROW_COST = 4.0


def _column_gemm(col_programs: Sequence[Program]) -> bool:
    """Whether the vertical passes run as matrix products (rank 1: where they were measured)."""
    return len(col_programs) == 1 and col_programs[0].cost() >= GEMM_MIN_PASSES


def _row_gemm(row: Program, pairs: int, ex: int) -> bool:
    """Whether the horizontal passes run as matrix products (rank 1, a short enough kernel)."""
    return pairs == 1 and ex - 1 <= GEMM_COLS and row.cost() >= GEMM_MIN_PASSES


def _column_matrices(
    pairs: tuple[tuple[NDArray[Any], NDArray[Any]], ...], dy: int, sy: int
) -> NDArray[Any]:
    """The vertical 1-D filters as band matrices ``(r, GEMM_ROWS, input rows)``.

    Row ``i`` of matrix ``k`` holds ``u_k`` at columns ``i * sy + j * dy``: one
    product gives ``GEMM_ROWS`` output rows of every pair at once.
    """
    kh = len(pairs[0][0])
    ey = (kh - 1) * dy + 1
    mats = np.zeros((len(pairs), GEMM_ROWS, (GEMM_ROWS - 1) * sy + ey), pairs[0][0].dtype)
    for k, (u, _) in enumerate(pairs):
        for i in range(GEMM_ROWS):
            mats[k, i, i * sy : i * sy + ey : dy] = u
    return mats


def _gemm_columns(
    mats: NDArray[Any], source: NDArray[Any], m: int, sy: int, ey: int, out: NDArray[Any]
) -> bool:
    """``out[k, :m] = u_k`` applied down ``source``'s columns, by BLAS matrix products.

    Returns False, leaving the tile to the pass-by-pass programs, when the
    result is not finite: a product also multiplies the band's zeros, and
    ``0 * inf`` would spread a NaN that skipping zero taps never makes.
    """
    for j0 in range(0, m, GEMM_ROWS):
        g = min(GEMM_ROWS, m - j0)
        rows = (g - 1) * sy + ey
        np.matmul(mats[:, :g, :rows], source[j0 * sy : j0 * sy + rows],
                  out=out[:, j0 : j0 + g])
    return bool(np.isfinite(out[:, :m].sum()))


def _unit_stride(geom: Geometry) -> Geometry:
    return Geometry(geom.in_shape, geom.kernel_shape, geom.pads, (1, 1), geom.dilation)


def fast_len(n: int) -> int:
    """The smallest ``2**a * 3**b * 5**c >= n``: a size pocketfft transforms fast.

    Computed here so that the cost model does not import scipy.

    >>> fast_len(4030), fast_len(257), fast_len(1)
    (4050, 270, 1)
    """
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            candidate = p35 << max(0, (-(-n // p35) - 1).bit_length())
            best = min(best, candidate)
            p35 *= 3
        p5 *= 5
    return best


def fft_blocks(count: int, extent: int, limit: int) -> tuple[int, int]:
    """``(size, blocks)`` along one axis: the FFT length and how many blocks cover it.

    ``count`` stride-1 outputs are cut into ``blocks`` blocks of ``size -
    extent + 1`` outputs each; ``size`` is a fast FFT length (:func:`fast_len`)
    of at most ``fast_len(max(limit, 4 * extent))``, so that the ``extent - 1``
    places a block shares with its neighbour stay a small part of it. Of the
    sizes within that limit, the one with the fewest transformed places in all
    (``size * blocks``) is taken, and of equal ones the fewest blocks: a block
    of 384 rows that covered 3000 rows with a 31-row kernel in 9 blocks
    (3456 rows) becomes 9 blocks of 375 (3375 rows).

    >>> fft_blocks(3000, 31, 384), fft_blocks(4000, 31, 512), fft_blocks(20, 5, 384)
    ((375, 9), (480, 9), (24, 1))
    """
    top = fast_len(max(limit, 4 * extent))
    if count + extent - 1 <= top:
        return fast_len(count + extent - 1), 1
    fewest = -(-count // (top - extent + 1))
    best = (top * fewest, fewest, top)
    # more blocks than twice the fewest cannot cover fewer places
    for blocks in range(fewest, 2 * fewest + 1):
        size = fast_len(-(-count // blocks) + extent - 1)
        if size <= top:
            best = min(best, (size * blocks, blocks, size))
    return best[2], best[1]


def _fft_plan(geom: Geometry) -> tuple[int, int, int, int]:
    """``(fy, fx, n, m)`` at stride 1: the FFT block size and the outputs each block yields."""
    return _fft_plan_for(geom.out_shape, geom.extent, FFT_TILE_ROWS, FFT_TILE_COLS)


@functools.lru_cache(maxsize=256)
def _fft_plan_for(
    out_shape: tuple[int, int], extent: tuple[int, int], rows: int, cols: int
) -> tuple[int, int, int, int]:
    (oh, ow), (ey, ex) = out_shape, extent
    fy, _ = fft_blocks(oh, ey, rows)
    fx, _ = fft_blocks(ow, ex, cols)
    return fy, fx, fy - ey + 1, fx - ex + 1


class BlockTransform:
    """The real 2-D FFT of one ``(fy, fx)`` block and its inverse, single-threaded.

    The transforms are scipy.fft's ``rfft2`` and ``irfft2`` (default
    normalisation). Where scipy's pocketfft binding takes an output array, the
    results land in two buffers this object keeps, so a thread transforming
    block after block allocates nothing: ``scipy.fft`` allocates both results
    afresh on every call, and on a 12 MP image with a 31x31 kernel those
    allocations (page faults on memory the allocator gave back) cost 10-15 %
    of the whole correlation. Without that binding, the public functions run.
    The arrays returned are overwritten by the next call of the same method.
    """

    def __init__(self, fy: int, fx: int, dtype: np.dtype[Any]) -> None:
        from scipy import fft as sfft

        self.shape = (fy, fx)
        self.sfft = sfft
        self.pocketfft = _pocketfft()
        complex_dtype = np.result_type(dtype, np.complex64)
        self.freq = np.empty((fy, fx // 2 + 1), complex_dtype)
        self.real = np.empty((fy, fx), dtype)

    def forward(self, block: NDArray[Any]) -> NDArray[Any]:
        """``rfft2(block, s=(fy, fx))``: a smaller block is zero-padded to the block shape."""
        freq: NDArray[Any]
        if self.pocketfft is None or block.shape != self.shape:
            freq = self.sfft.rfft2(block, s=self.shape, workers=1)
        else:
            freq = self.pocketfft.r2c(block, (0, 1), True, 0, self.freq, 1)
        return freq

    def inverse(self, freq: NDArray[Any]) -> NDArray[Any]:
        """``irfft2(freq, s=(fy, fx))``; ``freq`` may be overwritten."""
        real: NDArray[Any]
        if self.pocketfft is None:
            real = self.sfft.irfft2(freq, s=self.shape, workers=1, overwrite_x=True)
        else:
            real = self.pocketfft.c2r(freq, (0, 1), self.shape[1], False, 2, self.real, 1)
        return real


@functools.cache
def _pocketfft() -> Any:
    """scipy's pocketfft binding when it takes ``out`` (scipy 1.4 to 1.17 at least), else None.

    It is private to scipy, so it is checked, not trusted: a missing module, a
    changed signature, or results that do not land in the arrays given (and
    round-trip) fall back to the public ``scipy.fft`` functions.
    """
    try:
        from scipy.fft._pocketfft import pypocketfft as binding
    except ImportError:
        return None
    probe = np.arange(6.0).reshape(2, 3)
    freq_out, back_out = np.empty((2, 2), complex), np.empty((2, 3))
    try:
        freq = binding.r2c(probe, (0, 1), True, 0, freq_out, 1)
        back = binding.c2r(freq, (0, 1), 3, False, 2, back_out, 1)
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return None
    written = freq is freq_out and back is back_out
    return binding if written and np.allclose(back_out, probe) else None


@functools.lru_cache(maxsize=16)
def _spectrum_cached(
    data: bytes, shape: tuple[int, int], dtype: str, dilation: tuple[int, int],
    block: tuple[int, int],
) -> NDArray[Any]:
    kernel = np.frombuffer(data, dtype=dtype).reshape(shape)
    (kh, kw), (dy, dx) = shape, dilation
    dilated = np.zeros(((kh - 1) * dy + 1, (kw - 1) * dx + 1), kernel.dtype)
    dilated[::dy, ::dx] = kernel
    # correlation is convolution with the flipped kernel; rows ey-1.. and
    # columns ex-1.. of the circular result are free of wrap-around (overlap-save)
    spectrum: NDArray[Any] = BlockTransform(*block, kernel.dtype).forward(
        dilated[::-1, ::-1]).copy()
    spectrum.flags.writeable = False  # shared by every thread and call
    return spectrum


def _kernel_spectrum(
    kernel: NDArray[Any], dilation: tuple[int, int], block: tuple[int, int]
) -> NDArray[Any]:
    """The spectrum of the dilated, flipped kernel for blocks of ``block``, cached.

    A few recent ones are kept (a 384x512 block's is 0.8 MB in float32): a
    loop over small images computes it once rather than once a call.
    """
    k = np.ascontiguousarray(kernel)
    return _spectrum_cached(k.tobytes(), (k.shape[0], k.shape[1]), k.dtype.str,
                            (int(dilation[0]), int(dilation[1])), (int(block[0]), int(block[1])))


def _kept(t0: int, t1: int, step: int, count: int) -> tuple[int, int]:
    """Strided outputs ``[k0, k1)`` whose stride-1 index ``k * step`` lies in ``[t0, t1)``."""
    return -(-t0 // step), min(count, -(-t1 // step))


def fft(
    plane: NDArray[Any],
    kernel: NDArray[Any],
    geom: Geometry,
    mode: str,
    cval: float,
    *,
    out: NDArray[Any] | None = None,
    post: Post | None = None,
) -> NDArray[Any]:
    """Overlap-save FFT correlation over 2-D blocks (scipy's pocketfft as the primitive).

    The stride-1 output is cut into blocks (:func:`fft_blocks`: a few hundred
    rows and columns, so that a block and its spectrum stay in the core's L2
    cache through both transforms). Each block's padded input is filled into a
    buffer of its thread, transformed, multiplied by the kernel's spectrum
    (computed once for the whole call) and transformed back, into buffers the
    thread keeps (:class:`BlockTransform`). The rows and columns a block
    shares with its neighbours are its only overhead, and memory stays at a
    few blocks per thread. The cost per pixel hardly grows with the kernel, so
    large dense kernels go here. Dilation is exact (the dilated kernel is the
    kernel with zeros between its taps). A stride is not saved: blocks are
    those of the stride-1 result, which is subsampled, so that ``stride=s``
    gives exactly ``[::s, ::s]`` of the stride-1 output, as for every strategy.

    Notes
    -----
    Rounding differs from the direct sum (errors spread over a block rather
    than staying local), within float32 or float64 precision of the block's
    largest values. It also depends on the block size, which follows the
    machine's L2 cache (:func:`fft_block`): two machines may differ in the
    last bits. A NaN or infinity in the image spreads over its whole block.
    """
    dtype = kernel.dtype
    result = _output(out, geom, dtype)
    oh, ow = geom.out_shape
    (sy, sx), (ey, ex) = geom.stride, geom.extent
    dy, dx = geom.dilation
    unit = _unit_stride(geom)
    padder = Padder(plane, unit, mode, cval)
    fy, fx, n1, m1 = _fft_plan(unit)
    spectrum = _kernel_spectrum(kernel, (dy, dx), (fy, fx))
    oh1, ow1 = unit.out_shape
    # the stride-1 blocks that hold kept outputs, each with the kept rows and columns
    rows = [(t0, *_kept(t0, t1, sy, oh)) for t0, t1 in tile_grid(oh1, n1)]
    cols = [(u0, *_kept(u0, u1, sx, ow)) for u0, u1 in tile_grid(ow1, m1)]
    blocks = [(t0, r0, r1, u0, c0, c1) for t0, r0, r1 in rows if r0 < r1
              for u0, c0, c1 in cols if c0 < c1]

    def band(group: Iterable[tuple[int, int, int, int, int, int]]) -> None:
        transform = BlockTransform(fy, fx, dtype)
        buf = np.empty((fy, fx), dtype)
        for t0, r0, r1, u0, c0, c1 in group:
            # places past the padded plane enter the transform: always zero, so
            # a block's result does not depend on what its buffer held before
            rows_in = min(fy, padder.rows_total - t0)
            cols_in = min(fx, padder.width - u0)
            padder.fill(buf, t0, rows_in, u0, u0 + cols_in)
            buf[rows_in:] = 0
            buf[:rows_in, cols_in:] = 0
            freq = transform.forward(buf)
            freq *= spectrum
            full = transform.inverse(freq)
            top, left = ey - 1 + r0 * sy - t0, ex - 1 + c0 * sx - u0
            kept = full[top : top + sy * (r1 - r0 - 1) + 1 : sy,
                        left : left + sx * (c1 - c0 - 1) + 1 : sx]
            store(kept, result[r0:r1, c0:c1], post)

    run_bands(blocks, band, oh * ow)
    return result


STRATEGIES: dict[str, Strategy] = {
    "direct": direct, "separable": separable, "fft": fft, "small": small,
}

#: Largest sum that int16 arithmetic holds.
INT16_MAX = 32767


def exact_int16(
    kernel: NDArray[Any], strategy: str, image_dtype: np.dtype[Any], cval: float
) -> NDArray[np.int16] | None:
    """``kernel`` as int16 when int16 arithmetic gives exactly the float32 result, else None.

    For uint8 and int8 images and whole-number weights, the passes of
    ``direct`` and ``separable`` can add int16s instead of float32s: half the
    bytes per pass, and no rounding at all, so the result is the float32 one
    (which is exact too: its sums stay far below 2**24). It is used when no
    partial or final sum can exceed 32767: the sum of ``|weight| * M`` over the
    kernel (``direct``) or over each factor and each pair of factors
    (``separable``), with ``M`` the largest magnitude of a pixel or of ``cval``.
    A uint8 image takes weights whose magnitudes add up to at most 128 (sobel:
    8, the diagonal: 12, kirsch: 30). The FFT, and the matrix products
    ``separable`` uses for long 1-D filters, stay in float32.
    """
    if (image_dtype not in (np.dtype(np.uint8), np.dtype(np.int8)) or kernel.ndim != 2
            or strategy not in ("direct", "separable", "small") or cval != round(cval)):
        return None
    if not np.array_equal(kernel, np.round(kernel)):
        return None
    largest = max(255 if image_dtype == np.uint8 else 128, abs(cval))
    if strategy in ("direct", "small"):  # the same program
        bound = float(np.abs(kernel).sum())
    else:
        pairs = low_rank(kernel.astype(np.float64), exact_rtol(np.dtype(np.int16)))
        if not all(np.array_equal(f, np.round(f)) for pair in pairs for f in pair):
            return None
        col_programs = [column_program(u, 1) for u, _ in pairs]
        row = row_program([v for _, v in pairs], 1)
        if _column_gemm(col_programs) or _row_gemm(row, len(pairs), kernel.shape[1]):
            return None
        bound = max(
            sum(float(np.abs(u).sum()) for u, _ in pairs),  # the vertical partial sums
            sum(float(np.abs(u).sum() * np.abs(v).sum()) for u, v in pairs),
        )
    if bound * largest > INT16_MAX:
        return None
    return kernel.astype(np.int16)


def _copy_cost(geom: Geometry, width: int, n: int) -> float:
    """Passes per output pixel to fill the padded tiles (rows overlap between tiles)."""
    (sy, _), ey = geom.stride, geom.extent[0]
    ow = geom.out_shape[1]
    return COPY_COST * ((n - 1) * sy + ey) * width / (n * ow)


def _fft_cost(geom: Geometry) -> float:
    """The FFT's passes per output pixel: it computes every stride-1 output and subsamples."""
    unit = _unit_stride(geom)
    fy, fx, n1, m1 = _fft_plan(unit)
    (oh1, ow1) = unit.out_shape
    blocks = -(-oh1 // n1) * -(-ow1 // m1)
    per_block = FFT_COST * fy * fx * math.log2(max(2, fy * fx)) + COPY_COST * fy * fx
    return per_block * blocks / (oh1 * ow1) * geom.stride[0] * geom.stride[1]


def costs(kernel: NDArray[Any], geom: Geometry, compiled: bool = False,
          in_place: bool = False) -> dict[str, float]:
    """Estimated element passes per output pixel of each strategy (lower is faster).

    ``compiled``: with the compiled path on (:data:`JIT_STEP_COST`).
    ``in_place``: the planes are in the kernel's dtype with contiguous rows
    (:func:`readable_in_place`): the compiled ``direct`` copies no padded tile.

    >>> from imgconv.core.geometry import Geometry
    >>> g = Geometry((3000, 4000), (3, 3), (1, 1, 1, 1), (1, 1), (1, 1))
    >>> c = costs(np.ones((3, 3), np.float32) / 9, g)
    >>> min(c, key=c.__getitem__)
    'separable'
    """
    ow = geom.out_shape[1]
    sy, sx = geom.stride
    ex = geom.extent[1]
    width = (ow - 1) * sx + ex
    itemsize = kernel.dtype.itemsize
    n = tile_rows(width, itemsize, sy)
    copy = _copy_cost(geom, width, n)
    if kernel.size > LARGE_TAPS:
        return _large_costs(kernel, geom, copy, width)
    program = direct_program(kernel, geom.dilation)
    direct = float(program.cost())
    if compiled and len(program.steps) <= jit.MAX_STEPS:
        direct = 1 + JIT_STEP_COST * len(program.steps)
    found = {"direct": copy + direct}

    col, row = separable_programs(kernel, geom.dilation)
    found["separable"] = copy + _separable_cost(col, row, geom, width)

    found["fft"] = _fft_cost(geom)
    unit = _unit_stride(geom)
    _, _, n1, m1 = _fft_plan(unit)
    (oh1, ow1) = unit.out_shape
    blocks = -(-oh1 // n1) * -(-ow1 // m1)

    pixels = geom.out_shape[0] * ow
    if pixels <= (SMALL_MAX_PIXELS if compiled else SMALL_COST_PIXELS):
        # On a small plane the Python around the passes outweighs them: each
        # numpy call, and each strategy's set-up, priced in element passes
        programs = small_programs(kernel, geom.dilation)
        rows_in = (geom.out_shape[0] - 1) * sy + geom.extent[0]
        passes = 0.0
        for i, p in enumerate(programs):
            share = width / ow if i < len(programs) - 1 else 1.0  # vertical: all columns
            steps = len(p.steps)
            passes += share * (1 + JIT_STEP_COST * steps if compiled and steps <= jit.MAX_STEPS
                               else p.cost())
        bands = -(-pixels // SMALL_MAX_PIXELS)
        calls = {
            "small": bands * (len(programs) if compiled
                              else sum(len(p.steps) for p in programs)),
            "direct": 1 if compiled else len(program.steps),
            "separable": (2 if compiled else sum(len(p.steps) for p in (*col, row))),
            "fft": 6 * blocks,
        }
        found["small"] = COPY_COST * rows_in * width / pixels + passes
        setup = dict(SETUP_PIXELS)
        if compiled and in_place and sx == 1 and len(program.steps) <= jit.MAX_STEPS:
            found["direct"] -= copy  # (Padder.mapped: the image read in place)
            setup["direct"] = JIT_DIRECT_SETUP_PIXELS
        for name in found:
            found[name] += (setup[name] + CALL_PIXELS * calls[name]) / pixels
    return found


#: A kernel of more taps than this is priced without building its programs
#: (:func:`_large_costs`): a 1001x1001 one has a million, whose programs and exact
#: low-rank split take minutes of Python, where the FFT filters in seconds
LARGE_TAPS = 32 * 32
#: ... and the separable strategy is priced only when it splits into this many pairs
#: at most (gaussians and boxes are rank 1, LoG rank 2); a kernel of higher rank
#: costs more passes that way than the FFT does
LARGE_PAIRS = 4


def _separable_cost(col: tuple[Program, ...], row: Program, geom: Geometry,
                    width: int) -> float:
    col_cost = (GEMM_COLUMN_COST if _column_gemm(col)
                else sum(0 if _is_identity(p) else p.cost() for p in col))
    row_cost = (GEMM_ROW_COST if _row_gemm(row, len(col), geom.extent[1])
                else row.cost())
    return col_cost * width / geom.out_shape[1] + row_cost


def _large_costs(kernel: NDArray[Any], geom: Geometry, copy: float,
                 width: int) -> dict[str, float]:
    """:func:`costs` of a kernel over :data:`LARGE_TAPS` taps: direct, separable or fft.

    The direct sum is priced by its taps and weight groups (what its program
    would cost) without building the program; the separable strategy only when
    the kernel splits into at most :data:`LARGE_PAIRS` pairs.
    """
    nonzero = kernel[kernel != 0]
    direct = nonzero.size + len(set(np.abs(nonzero).tolist()))
    found = {"direct": copy + direct, "separable": math.inf, "fft": _fft_cost(geom)}
    if rank_at_most(kernel, LARGE_PAIRS):
        col, row = separable_programs(kernel, geom.dilation)
        found["separable"] = copy + _separable_cost(col, row, geom, width)
    return found


def choose_strategy(kernel: NDArray[Any], geom: Geometry, *, in_place: bool = False) -> str:
    """Pick the cheapest strategy for this kernel and geometry by :func:`costs`.

    ``in_place``: the image's planes are in the kernel's dtype with contiguous
    rows (:func:`readable_in_place`), so the compiled ``direct`` reads them
    where they are.

    The choice is made for stride 1, so that a strided call uses the same
    strategy, and so the same rounding, as the stride-1 call it subsamples:
    ``correlate(x, k, stride=s)`` is exactly ``correlate(x, k)[::s, ::s]``.
    With the compiled path on, ``direct`` is cheaper and is chosen more often
    (box 3x3, sobel, gaussian 5x5): each strategy gives the same bits on
    either path, but a different strategy rounds differently in the last bits.

    >>> from imgconv.core.geometry import Geometry
    >>> g = Geometry((3000, 4000), (31, 31), (15, 15, 15, 15), (1, 1), (1, 1))
    >>> choose_strategy(np.random.default_rng(0).random((31, 31)), g)
    'fft'
    """
    k = np.ascontiguousarray(kernel)
    return _choice(k.tobytes(), (k.shape[0], k.shape[1]), k.dtype.str, _unit_stride(geom),
                   jit.enabled(), in_place, TILE_BYTES, FFT_TILE_ROWS, FFT_TILE_COLS)


@functools.lru_cache(maxsize=1024)
def _choice(data: bytes, shape: tuple[int, int], dtype: str, geom: Geometry, compiled: bool,
            in_place: bool, *settings: int) -> str:
    """:func:`choose_strategy`, cached per kernel, geometry, path and the tile settings."""
    found = costs(np.frombuffer(data, dtype=dtype).reshape(shape), geom, compiled=compiled,
                  in_place=in_place)
    return min(found, key=found.__getitem__)

