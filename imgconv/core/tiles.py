"""Row tiles: the unit of work of every fast strategy.

An output plane is cut into bands of whole rows. For each tile of output rows
the strategy asks a :class:`Padder` for the padded input rows it reads, already
converted to the working dtype (so a uint8 image is never converted as a
whole), computes the tile in buffers that stay in the CPU cache, and writes it
to the output. Bands of consecutive tiles run on the thread pool; the tile grid
depends only on the geometry, never on the thread count, and every tile is
computed the same way whichever thread takes it, so results are identical
whatever the number of threads.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from imgconv.core.geometry import Geometry
from imgconv.core.padding import Mapped, map_positions, source_indices
from imgconv.core.threads import get_threads, run_parallel

#: A per-tile hook applied to each finished float tile, in place, before it is
#: stored into the output (for example clipping before a cast to uint8).
Post = Callable[[NDArray[Any]], object]

TileT = TypeVar("TileT")

# Below this many output pixels a plane is one tile on the calling thread:
# handing work to the pool costs more than it saves.
PARALLEL_MIN_PIXELS = 1 << 16


class Padder:
    """Fill rows of the padded plane into a tile buffer, converting dtype on the way.

    The padded plane is never materialised: the interior of each tile row is
    one slice copy of the source row (casting as it copies) and the few border
    places are looked up through the border mode's index map.
    """

    def __init__(self, plane: NDArray[Any], geom: Geometry, mode: str, cval: float) -> None:
        self.plane = plane
        self.mode = mode
        self.cval = cval
        h, w = plane.shape
        top, left = geom.pads[0], geom.pads[2]
        oh, ow = geom.out_shape
        (sy, sx), (ey, ex) = geom.stride, geom.extent
        self.top = top
        self.rows_total = (oh - 1) * sy + ey
        #: padded columns the output reads: the tile width
        self.width = (ow - 1) * sx + ex
        self.c0 = min(left, self.width)
        self.c1 = max(self.c0, min(left + w, self.width))
        self.src_c0 = self.c0 - left
        self.row_map, self.left_cols, self.right_cols, self.columns_from_interior = _border_maps(
            h, w, top, self.rows_total, left, self.width, mode)

    def inside(self, p0: int, count: int) -> bool:
        """Whether padded rows ``p0 .. p0 + count - 1`` are all image rows."""
        return self.top <= p0 and p0 + count <= self.top + self.plane.shape[0]

    def rows(self, p0: int, count: int) -> NDArray[Any]:
        """Image rows for padded rows inside the image: a view, in the image's dtype."""
        return self.plane[p0 - self.top : p0 - self.top + count, self.src_c0 : self.src_c0 + (
            self.c1 - self.c0)]

    def extend_columns(self, buf: NDArray[Any]) -> None:
        """Fill ``buf``'s border columns from its interior ones, as the border mode says."""
        shift = self.c0 - self.src_c0
        if self.c0:
            buf[:, : self.c0] = buf[:, self.left_cols + shift]
        if self.c1 < self.width:
            buf[:, self.c1 : self.width] = buf[:, self.right_cols + shift]

    def mapped(self, out_cols: int, extent: int, dtype: np.dtype[Any]) -> Mapped:
        """The padded plane as the image and index maps (:class:`Mapped`), from padded row 0.

        For taps ``extent`` columns wide at column stride 1 over ``out_cols``
        output columns, reading the plane in ``dtype`` (which must be its own).
        """
        h, w = self.plane.shape
        left = self.c0 - self.src_c0
        rows, cols, interior, border = _mapped(
            h, w, self.top, self.rows_total, left, self.width, self.mode, out_cols, extent)
        # (made anew, not cached by cval: 0.0 == -0.0, and the sign of zero is kept)
        fill = np.full(w, self.cval, dtype=dtype)
        fill.flags.writeable = False
        return Mapped(self.plane, rows, cols, fill, left, interior, border, 0)

    def fill(
        self, tile: NDArray[Any], p0: int, count: int, q0: int = 0, q1: int | None = None
    ) -> None:
        """Write padded rows ``p0 .. p0 + count - 1``, columns ``q0 .. q1 - 1``, into ``tile``.

        They land in ``tile[:count, :q1 - q0]``; ``q1`` defaults to the tile
        width and must not pass it. The interior is one slice copy per band of
        rows (casting as it copies); border places come through the mode's
        index maps.
        """
        h = self.plane.shape[0]
        q1 = self.width if q1 is None else q1
        # the window's image columns [c0, c1) and its border columns on each side
        c0, c1 = min(max(self.c0, q0), q1), max(q0, min(self.c1, q1))
        sc0, sc1 = self.src_c0 + c0 - self.c0, self.src_c0 + c1 - self.c0
        left = self.left_cols[q0:c0]  # empty when the window starts past the left border
        right = self.right_cols[max(0, c1 - self.c1) : max(0, q1 - self.c1)]
        # rows of the tile that come straight from the image, in order
        a = min(max(self.top, p0), p0 + count)
        b = max(a, min(self.top + h, p0 + count))
        constant = self.mode == "constant"
        span: list[tuple[int, int, slice | NDArray[Any]]] = []
        if a < b:
            span.append((a - p0, b - p0, slice(a - self.top, b - self.top)))
        span += [(lo - p0, hi - p0, self.row_map[lo:hi])  # border rows above and below
                 for lo, hi in ((p0, a), (b, p0 + count)) if lo < hi]
        for d0, d1, rows in span:
            dst = tile[d0:d1]
            if constant and not isinstance(rows, slice):
                dst[:, : q1 - q0] = self.cval
                continue
            src = self.plane[rows]
            np.copyto(dst[:, c0 - q0 : c1 - q0], src[:, sc0:sc1], casting="unsafe")
            if constant:
                dst[:, : c0 - q0] = self.cval
                dst[:, c1 - q0 : q1 - q0] = self.cval
            else:
                if len(left):
                    dst[:, : c0 - q0] = src[:, left]
                if len(right):
                    dst[:, c1 - q0 : q1 - q0] = src[:, right]


@functools.lru_cache(maxsize=256)
def _border_maps(
    h: int, w: int, top: int, rows_total: int, left: int, width: int, mode: str
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp], bool]:
    """A :class:`Padder`'s index maps, cached: ``(row_map, left_cols, right_cols, interior)``.

    ``interior`` (:attr:`Padder.columns_from_interior`): whether every border
    column repeats a column of the tile's interior. Then a column-wise pass (a
    vertical 1-D filter) can run on the image's own rows and have its border
    columns copied afterwards (:meth:`Padder.extend_columns`), with no padded
    tile at all. The maps are read-only: every call and thread shares them
    (building them with ``np.isin`` took a third of a 28x28 call's time).
    """
    c0 = min(left, width)
    c1 = max(c0, min(left + w, width))
    if mode == "constant":
        empty = np.empty(0, dtype=np.intp)
        empty.flags.writeable = False
        return empty, empty, empty, False
    row_map = source_indices(h, top, max(0, rows_total - top - h), mode)
    col_map = source_indices(w, left, max(0, width - left - w), mode)
    left_cols, right_cols = col_map[:c0], col_map[c1:width]
    src_c0 = c0 - left
    # the border columns' sources all lie in [src_c0, src_c0 + c1 - c0)
    interior = all(bool(((cols >= src_c0) & (cols < src_c0 + c1 - c0)).all())
                   for cols in (left_cols, right_cols))
    for a in (row_map, left_cols, right_cols):
        a.flags.writeable = False
    return row_map, left_cols, right_cols, interior


@functools.lru_cache(maxsize=64)
def _mapped(
    h: int, w: int, top: int, rows_total: int, left: int, width: int, mode: str,
    out_cols: int, extent: int,
) -> tuple[NDArray[np.intp], NDArray[np.intp], tuple[int, int], NDArray[np.intp]]:
    """:meth:`Padder.mapped`'s index maps, cached, read-only: ``(rows, cols, interior, border)``."""
    rows = map_positions(np.arange(-top, rows_total - top, dtype=np.intp), h, mode)
    cols = map_positions(np.arange(-left, width - left, dtype=np.intp), w, mode)
    # output columns whose taps all read image columns: q - left in [0, w)
    cl = min(out_cols, left)
    cr = max(cl, min(out_cols, left + w - extent + 1))
    border = np.r_[0:cl, cr:out_cols].astype(np.intp)
    for a in (rows, cols, border):
        a.flags.writeable = False
    return rows, cols, (cl, cr), border


def tile_grid(rows: int, tile_rows: int) -> list[tuple[int, int]]:
    """Output row ranges ``[(r0, r1), ...]`` of at most ``tile_rows`` rows.

    >>> tile_grid(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    return [(r, min(r + tile_rows, rows)) for r in range(0, rows, tile_rows)]


class _Runs(Generic[TileT]):
    """Tiles cut into one contiguous run per worker; a worker that runs out steals.

    Worker ``i`` takes its run's tiles front to back; when it has none left it
    takes the last tile of the longest run still pending. So each thread
    writes one contiguous part of the output, as a static split would, and
    threads do not fault in the same pages of a fresh output together (on the
    2-core Xeon of the README, a 12 MP float32 box 3x3 with the compiled path
    took 14.1 ms against 16.6-22.5 ms with one shared queue of tiles), yet a
    thread slowed by other work on the machine does not hold up the whole
    image.
    """

    def __init__(self, tiles: list[TileT], workers: int) -> None:
        cuts = [len(tiles) * i // workers for i in range(workers + 1)]
        self._runs = [deque(tiles[a:b]) for a, b in itertools.pairwise(cuts)]
        self._lock = threading.Lock()

    def worker(self, index: int) -> Iterator[TileT]:
        """The tiles worker ``index`` computes, one at a time."""
        own = self._runs[index]
        while True:
            with self._lock:
                if own:
                    tile = own.popleft()
                else:
                    longest = max(self._runs, key=len)
                    if not longest:
                        return
                    tile = longest.pop()
            yield tile


def run_bands(
    tiles: list[TileT],
    band: Callable[[Iterable[TileT]], None],
    pixels: int,
) -> None:
    """Run ``band`` over ``tiles``, on the thread pool when worth it.

    Each call of ``band`` allocates its own scratch buffers once and reuses them
    for every tile it takes, so threads share nothing but the output. With
    several threads, each worker runs ``band`` over its own contiguous run of
    tiles and then helps with the others' (:class:`_Runs`), so a thread slowed
    by other work on the machine, or by costlier tiles, does not hold up the
    whole image.
    """
    # (the thread count last: it asks the OS for the process's cores)
    if len(tiles) <= 1 or pixels < PARALLEL_MIN_PIXELS or (count := get_threads()) <= 1:
        band(tiles)
        return
    workers = min(count, len(tiles))
    runs = _Runs(tiles, workers)
    run_parallel(lambda i: band(runs.worker(i)), range(workers), count)


def accumulator(buffer: NDArray[Any], dst: NDArray[Any], post: Post | None) -> NDArray[Any]:
    """Where a tile's passes add up: ``dst`` itself when it can take them, else ``buffer``.

    With no ``post`` and ``dst`` of the working dtype with contiguous rows, the
    passes run in the output rows (the first one brings them into the cache)
    and :func:`store` has nothing left to copy: one pass a tile fewer (box,
    sobel-x and the diagonal 3x3 on 12 MP float32: 5-12 % faster). Otherwise
    they run in ``buffer``, a cache-resident scratch tile, and are stored after
    ``post``.
    """
    if post is None and dst.dtype == buffer.dtype and dst.strides[-1] == dst.itemsize:
        return dst
    return buffer


def store(acc: NDArray[Any], dst: NDArray[Any], post: Post | None) -> None:
    """Finish a tile: apply ``post`` in place, then copy into ``dst`` unless it is ``acc``.

    ``post`` gets a float tile: an int16 one (exact sums) is converted to
    float32 first, unless ``post`` has a true ``takes_int16`` attribute.
    """
    if post is not None:
        if acc.dtype.kind != "f" and not getattr(post, "takes_int16", False):
            acc = acc.astype(np.float32)
        post(acc)
    if acc is not dst:
        np.copyto(dst, acc, casting="unsafe")
