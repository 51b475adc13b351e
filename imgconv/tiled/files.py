"""Files that stream: TIFF/BigTIFF, ``.npy`` and ``.zarr``, read by region and written by band.

Reading is lazy: a dask array whose chunks read their own region of the file
(a TIFF's tiles or strips decoded by tifffile's codecs, a memory map of a
``.npy``, a zarr array), opened once per process by path, so the array also
runs on a ``dask.distributed`` cluster that shares the file system.

Writing goes through :func:`write_bands`: the array is computed one band of
chunk rows at a time, in order (the next while one is written); a TIFF gets
tiles, a ``.npy`` its rows, a ``.zarr`` its chunks. The output is made as a
temporary file (or folder) beside the target and renamed when whole, so an
interrupted run leaves no partial output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import dask.array as da
import dask.base
import numpy as np
from numpy.typing import NDArray

from imgconv.errors import ImageError, UsageError
from imgconv.imageio import (
    ALREADY_EXISTS,
    STREAM_FORMATS,
    depth_of,
    first_line,
    luminance,
    tiff_alpha,
    tiff_layout,
    tiff_orientation,
    unpremultiply,
    upright,
    write_atomic,
    zarr_node,
)
from imgconv.opening import stream_format
from imgconv.tiled.windows import SOURCES

#: The side of a TIFF output's tiles
TIFF_TILE = 256
#: The default chunk side for reading
DEFAULT_CHUNK = 1024


@dataclass
class Source:
    """A file's pixels as lazy arrays, with what :class:`imgconv.imageio.Picture` says."""

    pixels: da.Array
    alpha: da.Array | None
    max_value: float
    depth: str
    notes: list[str] = field(default_factory=list)
    icc_profile: bytes | None = None  # a TIFF's, kept in a TIFF or image output

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.pixels.shape)


class _Regions:
    """A file's array by region, for ``da.from_array``; opened once per process."""

    _open: ClassVar[dict[tuple[str, str, float], Any]] = {}
    _lock = threading.Lock()

    def __init__(self, path: str, kind: str, channels: int | slice | None = None) -> None:
        self.path, self.kind, self.channels = path, kind, channels
        array = self._array()
        self.dtype = array.dtype
        shape = tuple(int(n) for n in array.shape)
        if channels is not None:  # a view of some samples: the colour, or the alpha
            shape = shape[:2] + np.empty(shape[2:])[channels].shape
        self.shape = shape
        self.ndim = len(self.shape)

    def _key(self) -> tuple[str, str, float]:
        return (self.path, self.kind, os.stat(self.path).st_mtime)

    def _array(self) -> Any:
        key = self._key()
        with self._lock:
            if key in self._open:
                self._open[key] = self._open.pop(key)  # the most recently used, last
            else:
                while len(self._open) >= OPEN_FILES:  # the least recently used goes; its
                    self._open.pop(next(iter(self._open)))  # file closes once unread
                self._open[key] = _open_array(self.path, self.kind)
            return self._open[key][0]

    def _page(self) -> Any:
        self._array()
        return self._open[self._key()][1]

    def __getitem__(self, index: tuple[slice, ...]) -> NDArray[Any]:
        """The region ``index`` (slices, as ``da.from_array`` asks)."""
        region = self.read(index[0], index[1])
        return region[:, :, index[2]] if len(index) > 2 else region

    def read(self, rows: slice, cols: slice) -> NDArray[Any]:
        """Rows and columns of the image, with every channel of this view."""
        try:
            region = np.asarray(self._array()[rows, cols])
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ImageError(f"{self.path}: cannot read a region ({first_line(exc)})") from None
        return region if self.channels is None else region[:, :, self.channels]


#: How many files a process keeps open for reading by region
OPEN_FILES = 4


def _close(opened: tuple[Any, Any]) -> None:
    page = opened[1]
    if page is not None:
        page.parent.close()


def forget(path: str | os.PathLike[str]) -> None:
    """Close ``path`` if a reader holds it open (once its result is written)."""
    name = os.fspath(path)
    with _Regions._lock:
        for key in [k for k in _Regions._open if k[0] == name]:
            _close(_Regions._open.pop(key))


def _open_array(path: str, kind: str) -> tuple[Any, Any]:
    """(an array-like reading by region, the TIFF page or None)."""
    try:
        if kind == "npy":
            with np.errstate(all="ignore"):  # (a shape past memory: the error says so)
                return np.load(path, mmap_mode="r", allow_pickle=False), None
        if kind == "zarr":
            import zarr

            from imgconv.opening import check_store

            check_store(path)
            return zarr.open_array(path, mode="r"), None
        import tifffile

        tif = tifffile.TiffFile(path)
        page = tif.pages.first
        return _TiffSegments(page, path), page
    except ImageError:
        raise
    except Exception as exc:  # each library says "not mine" in its own way
        raise ImageError(f"{path}: not a readable {kind} ({first_line(exc)})") from None


#: Image rows of decoded segments a TIFF reader keeps, at least two rows of segments
CACHED_ROWS = 512


class _TiffSegments:
    """A TIFF page's pixels by region, (H, W) or (H, W, S), from its tiles or strips.

    Each segment a region touches is read (under the file's lock) and decoded
    by tifffile's codec for the page (imagecodecs releases the GIL, so threads
    decode in parallel); a segment with no bytes reads as zeros.
    """

    def __init__(self, page: Any, name: str) -> None:
        self.page, self.name = page, name
        self.samples = int(page.samplesperpixel)
        self.planar = page.planarconfig == 2 and self.samples > 1
        height, width = int(page.imagelength), int(page.imagewidth)
        self.shape: tuple[int, ...] = (height, width) if self.samples == 1 else (
            height, width, self.samples)
        self.dtype = np.dtype(page.dtype)
        if page.is_tiled:
            self.segment = (int(page.tilelength), int(page.tilewidth))
        else:
            self.segment = (int(page.rowsperstrip) or height, width)
        if min(height, width, *self.segment) < 1:
            raise ImageError(f"{name}: a page of {height}x{width} "
                             f"pixels in segments of {self.segment[0]}x{self.segment[1]} "
                             "has no pixels to read")
        self.grid = (-(-height // self.segment[0]), -(-width // self.segment[1]))
        segments = self.grid[0] * self.grid[1] * (self.samples if self.planar else 1)
        if min(len(page.dataoffsets), len(page.databytecounts)) < segments:
            raise ImageError(f"{name}: the page lists "
                             f"{len(page.dataoffsets)} data offsets and "
                             f"{len(page.databytecounts)} byte counts for {segments} segments")
        self.lock = threading.Lock()  # (tifffile's file handle has none by default)
        # decoded segments, most recent last: two rows of tiles, or the strips of 512 rows
        # (a band and its halos), so that the rows a band's halo reads below it are decoded
        # once, not again as the next band's own
        rows = max(2, -(-CACHED_ROWS // self.segment[0]))
        self.cache: OrderedDict[int, NDArray[Any] | None] = OrderedDict()
        self.cache_size = rows * self.grid[1] * (self.samples if self.planar else 1)
        self.cache_lock = threading.Lock()

    def __getitem__(self, index: tuple[slice, ...]) -> NDArray[Any]:
        rows, cols = index[0].indices(self.shape[0]), index[1].indices(self.shape[1])
        (r0, r1, _), (c0, c1, _) = rows, cols
        out = np.zeros((r1 - r0, c1 - c0, self.samples), self.dtype)
        (th, tw), (_, per_row) = self.segment, self.grid
        planes = range(self.samples) if self.planar else (None,)
        for i in range(r0 // th, (r1 - 1) // th + 1):
            for j in range(c0 // tw, (c1 - 1) // tw + 1):
                for plane in planes:
                    number = i * per_row + j + (plane or 0) * self.grid[0] * per_row
                    tile = self._decode(number)
                    if tile is None:
                        continue
                    y0, x0 = i * th, j * tw
                    ys = slice(max(r0, y0) - y0, min(r1, y0 + tile.shape[0]) - y0)
                    xs = slice(max(c0, x0) - x0, min(c1, x0 + tile.shape[1]) - x0)
                    where = (slice(ys.start + y0 - r0, ys.stop + y0 - r0),
                             slice(xs.start + x0 - c0, xs.stop + x0 - c0))
                    if plane is None:
                        out[where] = tile[ys, xs]
                    else:
                        out[where[0], where[1], plane] = tile[ys, xs, 0]
        return out if self.samples > 1 else out[:, :, 0]

    def _decode(self, number: int) -> NDArray[Any] | None:
        with self.cache_lock:
            if number in self.cache:
                self.cache.move_to_end(number)
                return self.cache[number]
        segment = self._decode_segment(number)
        if segment is not None:
            segment.flags.writeable = False  # shared by every chunk that reads it
        with self.cache_lock:
            self.cache[number] = segment
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return segment

    def _decode_segment(self, number: int) -> NDArray[Any] | None:
        page = self.page
        offset, count = page.dataoffsets[number], page.databytecounts[number]
        if not count:
            return None
        handle = page.parent.filehandle
        with self.lock:
            handle.seek(offset)
            data = handle.read(count)
        if len(data) != count:
            raise OSError(f"segment {number} is cut short: {len(data)} of {count} bytes")
        try:
            segment, _, _ = page.decode(data, number, jpegtables=page.jpegtables)
        except Exception as exc:  # a codec's or tifffile's own: the file is corrupt there
            raise ImageError(f"{self.name}: segment {number} cannot be decoded "
                             f"({type(exc).__name__}: {first_line(exc)})") from None
        if segment is None:
            return None
        return segment.reshape(segment.shape[-3:])  # (rows, columns, samples)


def read(path: str | os.PathLike[str], *, chunk: int | tuple[int, int] = DEFAULT_CHUNK,
         gray: bool = False) -> Source:
    """A TIFF, ``.npy`` or ``.zarr`` file as lazy pixels (and alpha), in chunks of ``chunk``
    pixels square (or (rows, columns)).

    A TIFF's first page is read; its fourth (or grey's second) sample is alpha
    when the file says so. An array's channels are all pixels. ``gray`` takes
    the luma of colour (:func:`imgconv.imageio.luminance`, as :func:`imgconv.imageio.load`).
    """
    name = os.fspath(path)
    kind = stream_format(name)
    if kind is None:
        raise ImageError(f"{name}: not a format read by region ({', '.join(STREAM_FORMATS)})")
    if kind == "zarr" and not os.path.isdir(name):
        raise ImageError(f"{name}: no such folder" if not os.path.exists(name)
                         else f"{name}: a .zarr store is a folder")
    if kind != "zarr":
        from imgconv.opening import check_regular

        check_regular(name)
        if not os.path.exists(name):
            raise ImageError(f"{name}: no such file")
    notes: list[str] = []
    regions = _Regions(name, kind)
    alpha_kind = None
    if kind == "tiff":
        page = regions._page()
        alpha_kind = tiff_alpha(page, name)
        if len(page.parent.pages) > 1:
            notes.append(f"{name}: has several pages; the first is filtered")
    if regions.ndim not in (2, 3) or 0 in regions.shape:
        raise ImageError(f"{name}: an array of shape {regions.shape} is not an image "
                         "((H, W) or (H, W, C))")
    if regions.ndim == 3 and regions.shape[2] > 4:
        raise ImageError(f"{name}: an array of shape {regions.shape} is not an image "
                         "((H, W) or (H, W, C) with C from 1 to 4)")
    depth, max_value = depth_of(regions.dtype, name)
    rows, cols = (chunk, chunk) if isinstance(chunk, int) else chunk
    turn = tiff_orientation(page) if kind == "tiff" else 1
    if turn in (5, 6, 7, 8):  # the file's rows are the picture's columns
        rows, cols = cols, rows
    token = dask.base.tokenize(name, regions._key(), chunk)

    def lazy(view: _Regions, part: str) -> da.Array:
        array = da.from_array(view, chunks=(rows, cols, -1)[:view.ndim], asarray=False,
                              fancy=False, lock=False, name=f"imgconv-read-{part}-{token}")
        SOURCES[array.name] = view  # stages read their chunks' pixels from it directly
        return array

    alpha = None
    if alpha_kind is not None:
        colour = regions.shape[2] - 1
        array = lazy(_Regions(name, kind, slice(0, colour) if colour > 1 else 0), "pixels")
        alpha = None if alpha_kind == "unused" else lazy(_Regions(name, kind, colour), "alpha")
        if alpha is not None and alpha_kind == "associated":
            # premultiplied colour, divided back as Pillow does
            plane = alpha if array.ndim == 2 else alpha[:, :, None]  # blocks line up by axis
            array = da.map_blocks(_unpremultiply, array, plane, dtype=array.dtype)
    else:
        array = lazy(regions, "pixels")
    if turn != 1:  # as Pillow's exif_transpose turns it
        array = upright(array, turn)
        alpha = None if alpha is None else upright(alpha, turn)
    if gray and array.ndim == 3 and array.shape[2] >= 3:
        array = array[:, :, :3].map_blocks(
            luminance, drop_axis=2, dtype=array.dtype if array.dtype.kind != "f" else np.float32)
    icc = page.iccprofile if kind == "tiff" else None
    return Source(array, alpha, max_value, depth, notes, icc)


def _unpremultiply(colour: NDArray[Any], alpha: NDArray[Any]) -> NDArray[Any]:
    return unpremultiply(colour, alpha if alpha.ndim == 2 else alpha[:, :, 0])


def open(path: str | os.PathLike[str], *, chunk: int = DEFAULT_CHUNK) -> da.Array:
    """A lazy (H, W) or (H, W, C) dask array of a TIFF, ``.npy`` or ``.zarr`` file.

    Every sample is a channel (a TIFF's alpha is the last); chunks are
    ``chunk`` pixels square. Raises :class:`imgconv.errors.ImageError` naming
    the file when it cannot be read.
    """
    source = read(path, chunk=chunk)
    if source.alpha is None:
        return source.pixels
    pixels = source.pixels if source.pixels.ndim == 3 else source.pixels[:, :, None]
    return da.concatenate([pixels, source.alpha[:, :, None]], axis=2)


# --- writing -------------------------------------------------------------------------

#: ``progress(blocks)``: called as each band is written, with its number of chunks
Progress = Callable[[int], None]


def bands(array: da.Array, *, scheduler: str | None = None) -> Iterator[NDArray[Any]]:
    """The array's bands of chunk rows, in order, each computed while the one before is
    consumed (written and compressed): two bands at most are held.

    Each band is one computation, and dask keeps nothing between two of them. So the
    blocks of earlier stages that a band computed are kept for the next one (those its
    halos reach again), and a chain's stages compute each block once; what the next band
    does not read is let go.
    """
    from concurrent.futures import ThreadPoolExecutor

    from dask.optimization import cull

    if array.ndim == 3 and len(array.chunks[2]) > 1:
        array = array.rechunk({2: -1})  # (pixels and alpha): one block a place
    graph = dict(array.__dask_graph__())
    get = dask.base.get_scheduler(scheduler=scheduler, collections=[array])
    kept: dict[Any, Any] = {}  # earlier stages' blocks, by key

    def compute(i: int) -> NDArray[Any]:
        keys = [(array.name, i, *rest) for rest in np.ndindex(*array.numblocks[1:])]  # by column
        needed, _ = cull(graph, keys)
        reused = {k: kept[k] for k in needed if k in kept}
        needed, _ = cull({**needed, **reused}, keys)
        fresh = [k for k in needed if k not in reused and k not in keys and _is_stage(k)]
        values = get(needed, [*keys, *fresh])
        kept.clear()  # what this band read or made, for the next one
        kept.update(reused)
        kept.update(zip(fresh, values[len(keys):], strict=True))
        blocks = values[:len(keys)]
        return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]

    count = array.numblocks[0]
    with ThreadPoolExecutor(1, thread_name_prefix="imgconv-band") as ahead:
        pending = ahead.submit(compute, 0)
        for i in range(count):
            band = pending.result()
            if i + 1 < count:
                pending = ahead.submit(compute, i + 1)
            yield band
            del band


def _is_stage(key: Any) -> bool:
    """Whether ``key`` is a block a stage computes (not a read of the file, nor the file)."""
    name = key[0] if isinstance(key, tuple) else key
    return isinstance(name, str) and not name.startswith(("imgconv-read", "original-array"))


def save(array: Any, path: str | os.PathLike[str], *, overwrite: bool = False,
         compression: str = "deflate", alpha: bool = False) -> None:
    """Write a dask (or numpy) array to a TIFF, ``.npy`` or ``.zarr``, band by band, atomically.

    A TIFF is a tiled BigTIFF (:data:`TIFF_TILE` square) of the array's dtype
    (uint8, uint16 or float32; ``compression`` one of :data:`imgconv.imageio.TIFF_COMPRESSIONS`);
    with ``alpha`` its last channel is alpha. ``.npy`` and ``.zarr`` keep the
    dtype. Refuses to replace an existing output unless ``overwrite``.
    """
    if not isinstance(array, da.Array):
        array = da.asarray(array)
    write_bands(array, path, overwrite=overwrite, compression=compression, alpha=alpha)


def write_bands(array: da.Array, path: str | os.PathLike[str], *, overwrite: bool = False,
                compression: str = "deflate", alpha: bool = False,
                progress: Progress | None = None, scheduler: str | None = None,
                icc_profile: bytes | None = None, fmt: str | None = None,
                threads: int | None = None) -> None:
    """:func:`save`, reporting each band's chunk count to ``progress``; ``fmt`` (tiff, npy
    or zarr) instead of the name's extension."""
    target = Path(path)
    kind = fmt or stream_format(target)
    if kind is None:
        raise UsageError(f"{target}: writes by region only to {', '.join(STREAM_FORMATS)}")
    if array.ndim not in (2, 3):
        raise ValueError(f"array must be 2-D (H, W) or 3-D (H, W, C), got shape {array.shape}")

    def each_band() -> Iterator[NDArray[Any]]:
        for band in bands(array, scheduler=scheduler):
            yield band
            if progress is not None:
                progress(array.numblocks[1])

    if kind == "zarr":
        _write_zarr(array, target, each_band(), overwrite=overwrite)
    elif kind == "npy":
        write_atomic(target, lambda stream: _write_npy(array, stream, each_band()),
                     overwrite=overwrite)
    else:
        write_atomic(target, lambda stream: _write_tiff(
            array, stream, each_band(), compression=compression, alpha=alpha,
            icc_profile=icc_profile, threads=threads or os.cpu_count() or 1),
            overwrite=overwrite)


def _write_npy(array: da.Array, stream: Any, rows: Iterator[NDArray[Any]]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(array.dtype)),
              "fortran_order": False, "shape": tuple(int(n) for n in array.shape)}
    np.lib.format.write_array_header_2_0(stream, header)
    for band in rows:
        stream.write(np.ascontiguousarray(band, dtype=array.dtype).data)


def _tiles(shape: tuple[int, ...], rows: Iterator[NDArray[Any]],
           tile: int) -> Iterator[NDArray[Any]]:
    """Bands of any height as TIFF tiles, a row of tiles at a time (the last ones short)."""
    height, width = shape[:2]
    pending: list[NDArray[Any]] = []
    held = done = 0
    for band in rows:
        pending.append(band)
        held += band.shape[0]
        while held >= tile or (held and done + held == height):
            strip = np.concatenate(pending) if len(pending) > 1 else pending[0]
            take = min(tile, held)
            for x in range(0, width, tile):
                yield strip[:take, x:x + tile]
            done += take
            rest = strip[take:]
            pending, held = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)


def _write_tiff(array: da.Array, stream: Any, rows: Iterator[NDArray[Any]], *,
                compression: str, alpha: bool, icc_profile: bytes | None,
                threads: int) -> None:
    import tifffile

    dtype = np.dtype(array.dtype)
    layout = tiff_layout(array.shape, dtype, alpha, compression)
    channels = array.shape[2] if array.ndim == 3 else 1
    # a stream from os.fdopen is named by its number, which tifffile cannot split
    with tifffile.TiffWriter(tifffile.FileHandle(stream, mode="wb", name="output.tif",
                                                 size=0), bigtiff=True) as tif:
        tif.write(
            _tiles(array.shape, rows, TIFF_TILE), shape=array.shape, dtype=dtype,
            tile=(TIFF_TILE, TIFF_TILE), **layout,
            iccprofile=icc_profile if layout["photometric"] == "rgb" else None,
            maxworkers=threads,
            # tiles are encoded a row of tiles at a time: tifffile's default would gather
            # 512 MB of them, holding that many bands alive
            buffersize=TIFF_TILE * array.shape[1] * max(channels, 1) * dtype.itemsize)


def _write_zarr(array: da.Array, target: Path, rows: Iterator[NDArray[Any]], *,
                overwrite: bool) -> None:
    """Write a zarr store to a temporary folder beside ``target``, then rename it."""
    import zarr

    if os.path.lexists(target) and not overwrite:
        raise ImageError(f"{target}: {ALREADY_EXISTS}")
    if os.path.lexists(target):
        _check_store(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".part",
                                dir=target.parent))
    # Each band is stored by a thread of its own, which this one waits for: zarr writes
    # through an event loop that an interrupted wait would leave writing chunk files into
    # the folder after it is removed. Here the band in flight always ends first.
    from concurrent.futures import ThreadPoolExecutor

    writer = ThreadPoolExecutor(1, thread_name_prefix="imgconv-zarr")
    try:
        chunks = (int(array.chunks[0][0]), int(array.chunks[1][0]), *array.shape[2:])
        z = zarr.open_array(tmp, mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype)
        y = 0
        for band in rows:
            writer.submit(z.__setitem__, slice(y, y + band.shape[0]), band).result()
            y += band.shape[0]
        _replace_folder(tmp, target, overwrite=overwrite)
    finally:
        writer.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _check_store(target: Path) -> None:
    """Refuse to replace what is not one zarr array: a file, a link, a group, other folders."""
    node = zarr_node(target)
    if node != "array":
        what = ("a zarr group, not an array" if node == "group" else
                "a folder that holds no zarr array" if target.is_dir() and not target.is_symlink()
                else "not a zarr store")
        raise ImageError(f"{target}: is {what}; refusing to replace it")


def _replace_folder(tmp: Path, target: Path, *, overwrite: bool) -> None:
    """Rename the folder ``tmp`` to ``target``; an old ``target`` goes only once it is in place."""
    if not os.path.lexists(target):
        try:
            os.rename(tmp, target)
            return
        except OSError:
            if not os.path.lexists(target):
                raise
    if not overwrite:
        raise ImageError(f"{target}: {ALREADY_EXISTS}")
    _check_store(target)
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".old",
                                dir=target.parent))
    os.rename(target, old / "store")
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old / "store", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)

