"""Opening image files with Pillow: the half of :mod:`imgconv.imageio` that needs no numpy.

This module imports Pillow only, never numpy, so that :mod:`imgconv.prefetch`
can open and decode a file in a thread while the main thread imports numpy
and the kernel library (Pillow's decoders release the GIL). A plain JPEG is
decoded straight into memory numpy then views (:func:`decode_into_buffer`).
"""

from __future__ import annotations

import io
import mmap
import os
import stat
import threading
from typing import Any

from imgconv.errors import ImageError, PixelLimitError

#: Pillow's bomb check is a global that :func:`open_image` sets aside for a moment.
_limit_lock = threading.Lock()

#: The formats read by region and written band by band (:mod:`imgconv.tiled`), by suffix
STREAM_SUFFIXES = {".tif": "tiff", ".tiff": "tiff", ".npy": "npy", ".zarr": "zarr"}


def stream_format(path: str | os.PathLike[str]) -> str | None:
    """``tiff``, ``npy`` or ``zarr`` by the name's extension (a ``.zarr`` is a folder); told
    without numpy, so the command line can decide before importing it."""
    return STREAM_SUFFIXES.get(os.path.splitext(os.fspath(path))[1].lower())


def display_name(source: str | bytes) -> str:
    """How messages name an input: its path, or ``<stdin>`` for bytes read from it."""
    return "<stdin>" if isinstance(source, bytes) else source


def file_kind(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is, or None for a regular file."""
    for test, kind in ((stat.S_ISREG, None), (stat.S_ISDIR, "folder"),
                       (stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def check_regular(path: str) -> None:
    """Refuse an input that is not a regular file, without opening it (a FIFO would block).

    A missing file passes: opening it then says so. ``/dev/stdin`` is refused
    like any device or pipe; ``-`` is how standard input is read.
    """
    try:
        kind = file_kind(os.stat(path).st_mode)
    except OSError:
        return
    if kind == "folder":
        raise ImageError(f"{path}: is a folder, not an image")
    if kind is not None:
        raise ImageError(f"{path}: is a {kind}, not a regular file; "
                         "only regular files are read (- reads standard input)")


def check_store(path: str) -> None:
    """Refuse a ``.zarr`` store holding anything but folders and regular files.

    A FIFO among its files would block the read (in zarr's own threads, where
    no signal reaches it); a link is followed to what it names.
    """
    folders = [path]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:
            return  # (reading the store says what is wrong)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.path)
                continue
            try:
                kind = file_kind(os.stat(entry.path).st_mode) if not entry.is_file() else None
            except OSError:
                continue  # a dangling link: zarr says the chunk is missing
            if kind is not None:
                raise ImageError(f"{path}: holds {entry.path}, a {kind}, not a regular file; "
                                 "only regular files are read")


def open_image(source: str | bytes, max_pixels: int) -> Any:
    """Open ``source`` (a path or the file's bytes), reading its header only.

    Raises ImageError, naming the file, if it is missing, not an image, or has
    more than ``max_pixels`` pixels (checked before anything is decoded).
    """
    from PIL import Image

    name = display_name(source)
    if isinstance(source, str):
        check_regular(source)
    # Opening reads only the header; the pixel limit is checked below, before any decoding,
    # so Pillow's own (global) bomb check is set aside for the call.
    with _limit_lock:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except FileNotFoundError:
            what = "folder" if name.endswith(("/", os.sep)) else "file"  # "photos/": a folder
            raise ImageError(f"{name}: no such {what}") from None
        except IsADirectoryError:
            raise ImageError(f"{name}: is a folder, not an image") from None
        except (OSError, SyntaxError, ValueError) as exc:
            reason = "empty input" if source == b"" else (
                "not a known image format" if isinstance(source, bytes) else str(exc))
            raise ImageError(f"{name}: not a readable image ({reason})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        streams = (" (a TIFF streams without the limit unless `tiles=False`)"
                   if im.format == "TIFF" else
                   "; TIFF, .npy and .zarr images are filtered in tiles, without the limit")
        raise PixelLimitError.of(name, w, h, max_pixels, streams)
    return im


def wide_colour(im: Any) -> str | None:
    """"PNG" or "TIFF" for an image of 16-bit colour, which Pillow would narrow to 8 bits."""
    tile = getattr(im, "tile", None) or [None]
    args = getattr(tile[0], "args", None)
    rawmode = args[0] if isinstance(args, tuple) and args else args
    if (im.mode in ("RGB", "RGBA") and im.format in ("PNG", "TIFF")
            and isinstance(rawmode, str) and ";16" in rawmode):
        return str(im.format)
    return None


#: EXIF tag of the orientation; 1 is upright.
EXIF_ORIENTATION = 0x0112


def decode_into_buffer(im: Any, gray: bool = False) -> mmap.mmap | None:
    """Decode an opened, not yet loaded image into memory of our own, when that is simple.

    For an 8-bit RGB or grey JPEG, upright and with one frame, Pillow's JPEG
    decoder writes straight into an anonymous mmap that numpy then views
    without a copy (:func:`imgconv.imageio.decode`): RGB as Pillow lays it
    out, four bytes a pixel ("RGBX"), grey one byte. So a 12 MP photo is held
    once, not as Pillow's image and then an array, and the copy between them
    goes (20-40 ms). Returns None, decoding nothing, for anything else, which
    takes Pillow's usual path. Decoding errors propagate, as from ``im.load()``.

    It hands Pillow its memory through ``Image.core.map_buffer``, the call
    ``Image.frombuffer`` makes; a Pillow without it gets the usual path. Only
    JPEG: Pillow's PNG decoder, for one, does not write into such an image.
    The tests compare every decoding this makes with Pillow's own.
    """
    from PIL import Image

    kind = {"RGB": "RGBX", "L": "L"}.get(im.mode)
    if (kind is None or im.format != "JPEG" or (gray and kind != "L")
            or len(getattr(im, "tile", ())) != 1
            or getattr(im, "n_frames", 1) != 1 or getattr(im, "_im", None) is not None
            or im.getexif().get(EXIF_ORIENTATION, 1) != 1):
        return None
    width, height = im.size
    buffer = mmap.mmap(-1, max(1, width * height * (4 if kind == "RGBX" else 1)))
    try:
        mapped = Image.core.map_buffer(  # type: ignore[attr-defined]
            buffer, im.size, "raw", 0, (kind, 0, 1))
        im.im = mapped
    except (AttributeError, TypeError, ValueError):
        buffer.close()
        return None
    im.load()
    # a Pillow that decodes into an image of its own instead (Pillow 10 replaces
    # an RGBX image under an RGB file) has loaded ``im`` as usual: use that
    return buffer if im.im is mapped else None
