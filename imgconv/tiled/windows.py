"""Windows over a chunked array: each output block made from exactly the pixels it reads.

A stage reads, for output place ``o`` along an axis, the padded places
``o*stride .. o*stride + extent - 1``; padded place ``q`` is source pixel
``q - before``, extended past the edges by the border mode
(:func:`imgconv.core.padding.map_positions`). For each block of output places
the graph gathers the source pixels that block's windows read, from whichever
chunks hold them (``wrap`` reads the far edge), pads them as the whole image
would be padded, and computes the block alone. So a block equals that part of
the whole result, whatever the chunks: smaller than the halo, not a multiple
of the stride, one pixel wide.

The graph is built here, one task per output block, from the chunks of the
input dask array: no scipy and no dask-image (whose ``wrap`` borders were
wrong past one chunk, dask/dask-image#242).
"""

from __future__ import annotations

import operator
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import NDArray

from imgconv.core.conv import working_dtype
from imgconv.core.padding import map_positions

#: ``compute(regions, block)``: an output block from one gathered region per reader;
#: ``block`` is ``(row0, row1, col0, col1)``, the block's place in the whole result
Compute = Callable[[list[NDArray[Any]], tuple[int, int, int, int]], NDArray[Any]]


class Regions(Protocol):
    """A file's pixels by region (:mod:`imgconv.tiled.files`)."""

    def read(self, rows: slice, cols: slice) -> NDArray[Any]: ...


#: The file behind each lazy array :func:`imgconv.tiled.files.read` made, by the array's
#: name: a stage reads exactly the pixels its blocks need from it (a halo of one row, not the
#: whole chunk above), with no task per chunk of the file
SOURCES: weakref.WeakValueDictionary[str, Regions] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class Windows:
    """Windows along one axis of ``n`` pixels: ``count`` of them, ``stride`` apart, each
    ``extent`` padded places wide, the first starting ``before`` places before pixel 0."""

    n: int
    before: int
    extent: int
    stride: int
    count: int

    def positions(self, a: int, b: int) -> NDArray[np.intp]:
        """The source positions (before the border mode) that outputs ``a .. b-1`` read."""
        start = a * self.stride - self.before
        return np.arange(start, (b - 1) * self.stride - self.before + self.extent, dtype=np.intp)


def blocks(count: int, side: int) -> list[tuple[int, int]]:
    """``[0, count)`` in pieces of ``side`` (the last may be shorter)."""
    return [(a, min(count, a + side)) for a in range(0, count, side)]


@dataclass(frozen=True)
class _AxisBlock:
    """What one block of output places reads along an axis."""

    #: ``(chunk index, slice in that chunk)``, in order: the source pixels gathered
    pieces: tuple[tuple[int, slice], ...]
    #: per reader, the gathered pixel for each padded place (-1: the fill value)
    takes: tuple[NDArray[np.intp], ...]


def _axis_block(readers: Sequence[Windows], a: int, b: int, mode: str,
                bounds: NDArray[np.intp]) -> _AxisBlock:
    sources = [map_positions(w.positions(a, b), w.n, mode) for w in readers]
    needed = np.unique(np.concatenate([s[s >= 0] for s in sources]))
    takes = tuple(np.where(s >= 0, np.searchsorted(needed, s), -1) for s in sources)
    pieces: list[tuple[int, slice]] = []
    if needed.size:
        breaks = np.flatnonzero(np.diff(needed) != 1) + 1
        for run in np.split(needed, breaks):
            lo, hi = int(run[0]), int(run[-1]) + 1
            while lo < hi:
                chunk = int(np.searchsorted(bounds, lo, side="right")) - 1
                end = min(hi, int(bounds[chunk + 1]))
                pieces.append((chunk, slice(lo - int(bounds[chunk]), end - int(bounds[chunk]))))
                lo = end
    return _AxisBlock(tuple(pieces), takes)


def windowed(
    x: da.Array,
    readers: Sequence[tuple[Windows, Windows]],
    compute: Compute,
    *,
    mode: str,
    fill: float,
    chunks: tuple[int, int],
    meta: NDArray[Any],
    name: str,
) -> da.Array:
    """A dask array of ``compute``'s blocks over ``x`` (H, W) or (H, W, C).

    ``readers`` are the (rows, columns) windows of each region that ``compute``
    takes (a bank's members may pad differently); every reader has the same
    ``count`` of windows. ``mode`` extends ``x`` past its edges (``constant``:
    the places outside read ``fill``). ``chunks`` are the output blocks' sides
    and ``meta`` a small array with the output's dtype and trailing axes.
    """
    if x.ndim == 3 and len(x.chunks[2]) > 1:
        x = x.rechunk({2: -1})  # a block reads every channel of its pixels
    source = SOURCES.get(x.name)  # a file's regions: read exactly what each block needs
    rows_out, cols_out = readers[0][0].count, readers[0][1].count
    row_bounds = np.cumsum((0, *x.chunks[0])) if source is None else np.array([0, x.shape[0]])
    col_bounds = np.cumsum((0, *x.chunks[1])) if source is None else np.array([0, x.shape[1]])
    row_blocks = [(a, b, _axis_block([r for r, _ in readers], a, b, mode, row_bounds))
                  for a, b in blocks(rows_out, chunks[0])]
    col_blocks = [(c, d, _axis_block([c_ for _, c_ in readers], c, d, mode, col_bounds))
                  for c, d in blocks(cols_out, chunks[1])]
    token = tokenize(x.name, readers, mode, fill, chunks, name, uuid.uuid4().hex)  # (compute
    # is a closure over its stage: each call is a computation of its own)
    out_name = f"{name}-{token}"
    tail = (0,) if x.ndim == 3 else ()
    out_tail = (0,) * (meta.ndim - 2)
    layer: dict[Any, Any] = {}
    for i, (a, b, rows) in enumerate(row_blocks):
        for j, (c, d, cols) in enumerate(col_blocks):
            pieces: list[list[Any]]
            if source is None:
                pieces = [[(operator.getitem, (x.name, ri, ci, *tail), (rs, cs))
                           for ci, cs in cols.pieces] for ri, rs in rows.pieces]
            else:
                pieces = [[(source.read, rs, cs) for _, cs in cols.pieces]
                          for _, rs in rows.pieces]
            key = (out_name, i, j, *out_tail)
            layer[key] = (
                _block, compute, pieces, rows.takes, cols.takes, fill, x.dtype, x.shape[2:],
                (a, b, c, d))
    graph = HighLevelGraph.from_collections(  # a file's regions are read by the layer itself
        out_name, layer, dependencies=[x] if source is None else [])  # type: ignore[list-item]
    out_chunks = (tuple(b - a for a, b, _ in row_blocks),
                  tuple(d - c for c, d, _ in col_blocks),
                  *((n,) for n in meta.shape[2:]))
    return da.Array(graph, out_name, out_chunks, meta=meta)


def _block(compute: Compute, pieces: list[list[NDArray[Any]]],
           row_takes: tuple[NDArray[np.intp], ...], col_takes: tuple[NDArray[np.intp], ...],
           fill: float, dtype: Any, tail: tuple[int, ...],
           block: tuple[int, int, int, int]) -> NDArray[Any]:
    region = _assemble(pieces, dtype, tail)
    regions = [_take(region, r, c, fill) for r, c in zip(row_takes, col_takes, strict=True)]
    return compute(regions, block)


def _assemble(pieces: list[list[NDArray[Any]]], dtype: Any,
              tail: tuple[int, ...]) -> NDArray[Any]:
    """The gathered pixels: the pieces laid out as a grid (one copy)."""
    if not pieces or not pieces[0]:
        return np.empty((0, 0, *tail), dtype)
    if len(pieces) == 1 and len(pieces[0]) == 1:
        return pieces[0][0]
    height = sum(row[0].shape[0] for row in pieces)
    width = sum(p.shape[1] for p in pieces[0])
    out = np.empty((height, width, *tail), dtype)
    y = 0
    for row in pieces:
        x = 0
        for p in row:
            out[y:y + p.shape[0], x:x + p.shape[1]] = p
            x += p.shape[1]
        y += row[0].shape[0]
    return out


def _take(region: NDArray[Any], rows: NDArray[np.intp], cols: NDArray[np.intp],
          fill: float) -> NDArray[Any]:
    """``region``'s rows and columns as the padded places read them; -1 reads ``fill``."""
    rows_out, cols_out = rows < 0, cols < 0
    if rows_out.any() or cols_out.any():
        out = np.full((rows.size, cols.size, *region.shape[2:]), fill,
                      working_dtype(region.dtype))
        keep_r, keep_c = np.flatnonzero(~rows_out), np.flatnonzero(~cols_out)
        if keep_r.size and keep_c.size:
            out[np.ix_(keep_r, keep_c)] = _gather(_gather(region, rows[keep_r], 0),
                                                  cols[keep_c], 1)
        return out
    return _gather(_gather(region, rows, 0), cols, 1)


def _gather(a: NDArray[Any], index: NDArray[np.intp], axis: int) -> NDArray[Any]:
    """``a`` taken at ``index`` along ``axis``: a view where the index is a plain range."""
    n = index.size
    if n and index[-1] - index[0] == n - 1 and (n == 1 or bool(np.all(np.diff(index) == 1))):
        lo = int(index[0])
        return a[lo:lo + n] if axis == 0 else a[:, lo:lo + n]
    return np.take(a, index, axis=axis)
