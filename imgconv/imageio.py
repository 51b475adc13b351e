"""The Pillow boundary: read images into arrays, write arrays into image files.

Everything about image modes, bit depth, alpha, EXIF orientation, ICC
profiles and safe (atomic, no-clobber) writing lives here; the rest of the
package sees numpy arrays.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from imgconv.errors import ImageError, PixelLimitError, UsageError
from imgconv.notes import warnings_as_notes
from imgconv.opening import (
    EXIF_ORIENTATION,
    STREAM_SUFFIXES,
    decode_into_buffer,
    display_name,
    file_kind,
    open_image,
    stream_format,
    wide_colour,
)

DEFAULT_MAX_PIXELS = 100_000_000

#: What Pillow raises for a corrupt or truncated file, beside its documented
#: OSError: a TIFF whose next directory lies past the end raises TypeError
#: ("Missing dimensions"); others, struct.error, EOFError, IndexError, KeyError
#: or ZeroDivisionError from a header's numbers.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error,
                 IndexError, KeyError, ZeroDivisionError)
# output format name -> (Pillow format, file extension)
FORMATS = {
    "png": ("PNG", ".png"),
    "jpg": ("JPEG", ".jpg"),
    "tiff": ("TIFF", ".tiff"),
    "webp": ("WEBP", ".webp"),
    "bmp": ("BMP", ".bmp"),
    "npy": ("NPY", ".npy"),
    "zarr": ("ZARR", ".zarr"),
}
EXTENSIONS = {
    ".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".tif": "tiff", ".tiff": "tiff",
    ".webp": "webp", ".bmp": "bmp", ".npy": "npy",
    ".zarr": "zarr",
}
# the extensions a folder is searched for
#: (arrays, ``.npy`` and ``.zarr``, are read when named, not found in folders: a folder's
#: .npy files may be a layer's weights)
INPUT_EXTENSIONS = (*(e for e in EXTENSIONS if e not in (".npy", ".zarr")),
                    ".gif", ".pgm", ".ppm", ".pbm", ".pnm", ".tga", ".ico")
#: A JPEG output's quality when neither ``quality`` nor a JPEG input gives one.
JPEG_QUALITY = 90
#: The widest and tallest image a format can hold, where less than Pillow allows.
MAX_SIDE = {"webp": 16383, "jpg": 65500}
DEPTHS = ("8", "16", "float")
SIXTEEN_BIT = ("png", "tiff")
#: The formats read by region and written band by band (:mod:`imgconv.tiled`)
STREAM_FORMATS = tuple(dict.fromkeys(STREAM_SUFFIXES.values()))  # tiff, npy, zarr
#: The compressions of a TIFF written band by band (``jpeg`` for 8-bit only)
TIFF_COMPRESSIONS = ("none", "deflate", "zstd", "lzw", "jpeg")
#: The formats that hold the float values as computed, never mapped
ARRAY_FORMATS = ("npy", "zarr")


def zarr_node(path: str | os.PathLike[str]) -> str | None:
    """"array" or "group" for a folder (not a link) holding a zarr store (v2 or v3), else None."""
    folder = Path(path)
    if not folder.is_dir() or folder.is_symlink():
        return None
    if (folder / ".zarray").is_file():
        return "array"
    if (folder / ".zgroup").is_file():
        return "group"
    if not (folder / "zarr.json").is_file():  # (a FIFO there would block the open)
        return None
    try:
        import json

        with open(folder / "zarr.json", "rb") as stream:
            node = json.loads(stream.read(1 << 20)).get("node_type")
    except (OSError, ValueError, AttributeError):
        return None
    return node if node in ("array", "group") else None


def first_line(exc: BaseException) -> str:
    """An exception's message for a one-line error: its first line, at most 200 characters
    (a library's own message, or its type's name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def depth_of(dtype: Any, name: str) -> tuple[str, float]:
    """(depth, full-intensity value) of an array's samples, as an image file's would be:
    uint8 "8" and 255, uint16 "16" and 65535, float "float" and 255 (Pillow's mode F)."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return "8", 255.0
    if dtype == np.uint16:
        return "16", 65535.0
    if dtype.kind == "f" and dtype.itemsize <= 8:
        return "float", 255.0
    raise ImageError(f"{name}: samples of type {dtype} are not read; "
                     "uint8, uint16 and float arrays are")


def luminance(rgb: NDArray[Any]) -> NDArray[Any]:
    """ITU-R 601-2 luma of (..., 3) samples, as Pillow's "L" computes it for 8 bits
    (integer weights, rounded), rounded for 16 bits, in float32 for floats."""
    if rgb.dtype == np.uint8:
        weights = np.array([19595, 38470, 7471], np.uint32)
        return ((rgb.astype(np.uint32) @ weights + 0x8000) >> 16).astype(np.uint8)
    if rgb.dtype == np.uint16:
        luma = rgb @ np.array([299, 587, 114], np.float64) / 1000
        return np.rint(luma).astype(np.uint16)
    return (rgb @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.float32)


def array_header(path: str, name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """The shape and dtype of a ``.npy`` file, from its header; ImageError if they are not
    an image's."""
    from imgconv.opening import check_regular

    check_regular(path)
    try:
        # (a header's shape past memory overflows numpy's size sum: the error says so)
        with np.errstate(all="ignore"):
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except Exception as exc:  # a header numpy cannot parse: ValueError, SyntaxError,
        # tokenize's TokenError, EOFError for an empty file
        raise ImageError(f"{name}: not a readable .npy array ({type(exc).__name__}: "
                         f"{exc})") from None
    if array.ndim not in (2, 3) or 0 in array.shape or (
            array.ndim == 3 and array.shape[2] > 4):
        raise ImageError(f"{name}: an array of shape {array.shape} is not an image "
                         "((H, W) or (H, W, C) with C from 1 to 4)")
    depth_of(array.dtype, name)
    return tuple(int(n) for n in array.shape), array.dtype


def tiff_layout(shape: tuple[int, ...], dtype: Any, alpha: bool,
                compression: str) -> dict[str, Any]:
    """tifffile's write arguments for samples of ``shape`` (H, W[, C]): photometric, extra
    samples (the last one alpha with ``alpha``) and ``compression`` (one of
    :data:`TIFF_COMPRESSIONS`); UsageError where the compression cannot hold them."""
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"a TIFF holds uint8, uint16 or float32 samples, got {dtype}")
    if compression not in TIFF_COMPRESSIONS:
        raise UsageError(f"`compression` must be one of {', '.join(TIFF_COMPRESSIONS)}, "
                         f"got {compression!r}")
    if compression == "jpeg" and (dtype != np.uint8 or alpha):
        raise UsageError("`compression=jpeg` holds 8-bit images without alpha only")
    channels = shape[2] if len(shape) == 3 else 1
    if alpha and channels < 2:
        raise ValueError(f"`alpha=True` needs a last channel to be alpha, got shape {shape}")
    colour = channels - int(alpha)
    photometric = "rgb" if colour == 3 else "minisblack"
    extras = channels - (3 if colour == 3 else 1)  # samples past the colour ones
    return {
        "photometric": photometric,
        "planarconfig": "contig" if channels > 1 else None,  # (H, W, 1): one sample
        "compression": None if compression == "none" else
        "zlib" if compression == "deflate" else compression,
        "extrasamples": ["unspecified"] * (extras - 1) + ["unassalpha"] if alpha else None,
    }


def tiff_alpha(page: Any, name: str) -> str | None:
    """How a TIFF page (tifffile's) holds alpha: "straight", "associated" (premultiplied),
    "unused" (an extra sample that is not alpha) or None; ImageError for what is read
    neither whole by tifffile nor by region."""
    import tifffile

    photometric = tifffile.PHOTOMETRIC
    kind = page.photometric
    if kind not in (photometric.MINISBLACK, photometric.RGB) and not (
            kind == photometric.YCBCR and page.compression == tifffile.COMPRESSION.JPEG):
        kind = getattr(kind, "name", kind)  # (a value tifffile does not know: an int)
        raise ImageError(f"{name}: a {str(kind).lower()} TIFF is not read here "
                         "(grey and RGB ones are); convert it, or read it whole with "
                         "`tiles=False`")
    if page.dtype is None or page.bitspersample not in (8, 16, 32, 64):
        raise ImageError(f"{name}: {page.bitspersample}-bit samples are not read here")
    samples = int(page.samplesperpixel)
    if samples not in (1, 2, 3, 4):
        raise ImageError(f"{name}: {samples} samples a pixel are not read (1 to 4 are)")
    if samples in (1, 3):
        return None
    if not page.extrasamples:
        raise ImageError(f"{name}: {samples} samples a pixel with no alpha are not read")
    # EXTRASAMPLE: 0 unspecified (RGBX: dropped, as Pillow does), 1 associated, 2 straight
    return {0: "unused", 1: "associated"}.get(int(page.extrasamples[-1]), "straight")


def unpremultiply(colour: NDArray[Any], alpha: NDArray[Any]) -> NDArray[Any]:
    """8-bit colour premultiplied by alpha, divided back as Pillow's RGBa -> RGBA does
    (``min(255, 255 * c // a)``; untouched where alpha is 0 or 255); other depths as given."""
    if colour.dtype != np.uint8:
        return colour
    a = alpha.astype(np.uint16)
    if colour.ndim == 3:
        a = a[:, :, None]
    divided = np.minimum(255, colour.astype(np.uint16) * 255 // np.maximum(a, 1))
    return np.where((a == 0) | (a == 255), colour, divided).astype(np.uint8)


def load_tiff(path: str, *, gray: bool = False,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """A TIFF that Pillow does not read (float colour, BigTIFF, zstd...), whole, through
    tifffile: its first page, alpha split off (and divided out where associated)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            h, w = int(page.imagelength), int(page.imagewidth)
            if h * w > max_pixels:
                raise PixelLimitError.of(path, w, h, max_pixels, " (a TIFF streams without "
                                         "the limit unless `tiles=False`)")
            if not h or not w:
                raise ImageError(f"{path}: a TIFF page of {h}x{w} pixels has none to read")
            alpha_kind = tiff_alpha(page, path)
            array = page.asarray()
            if page.planarconfig == 2 and array.ndim == 3:
                array = np.moveaxis(array, 0, -1)
            array = upright(array, tiff_orientation(page))
            icc = page.iccprofile
    except ImageError:
        raise
    except Exception as exc:  # tifffile's and the codecs' own errors
        raise ImageError(f"{path}: not a readable image ({first_line(exc)})") from None
    depth, max_value = depth_of(array.dtype, path)
    alpha = None
    if alpha_kind is not None:
        array, alpha = array[:, :, :-1], np.ascontiguousarray(array[:, :, -1])
        if array.shape[2] == 1:
            array = array[:, :, 0]
        if alpha_kind == "associated":
            array = unpremultiply(array, alpha)
        elif alpha_kind == "unused":
            alpha = None
    if gray and array.ndim == 3 and array.shape[2] >= 3:
        array = luminance(array[:, :, :3])
    return Picture(np.ascontiguousarray(array), alpha, max_value, depth, "tifffile", icc)


def load_array(path: str, *, gray: bool = False,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """A ``.npy`` (H, W) or (H, W, C) array as a Picture: every channel is pixels (no alpha),
    the depth and full intensity as :func:`depth_of` says; ``gray`` takes the luma of
    the first three channels."""
    shape, _ = array_header(path, path)
    if shape[0] * shape[1] > max_pixels:
        raise PixelLimitError.of(path, shape[1], shape[0], max_pixels,
                                 ", or let it stream (`tiles=True`)")
    array = np.load(path, allow_pickle=False)
    depth, max_value = depth_of(array.dtype, path)
    if gray and array.ndim == 3 and array.shape[2] >= 3:
        array = luminance(array[:, :, :3])
    return Picture(np.ascontiguousarray(array), None, max_value, depth, "array")


@dataclass
class Picture:
    """An image as arrays: colour or grey pixels, optional alpha, and what to keep on output.

    ``pixels`` is (H, W) or (H, W, C) in its natural dtype (uint8, uint16,
    int32 or float32); ``alpha`` is (H, W) in the same units, or None.
    ``max_value`` is the value of full intensity (255, 65535, or 255 for
    float images, Pillow's convention for mode "F").
    """

    pixels: NDArray[Any]
    alpha: NDArray[Any] | None
    max_value: float
    depth: str
    mode: str
    icc_profile: bytes | None = None
    notes: list[str] = field(default_factory=list)
    #: the input's EXIF block with its orientation set to 1 (the pixels are upright), or None
    exif: bytes | None = None
    #: a JPEG input's quantization tables, so a JPEG output keeps its quality; else None
    qtables: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)


#: Bytes standard input may hold beyond its pixels (header, EXIF, ICC, other metadata).
STDIN_SLACK = 16 << 20


def stdin_limit(max_pixels: int) -> int:
    """The most bytes :func:`read_stdin` should take for an image of ``max_pixels`` pixels.

    8 bytes a pixel (16-bit RGBA, uncompressed: the largest a pixel of a
    format imgconv reads takes) plus :data:`STDIN_SLACK`; so 816,777,216 bytes (779 MiB) for the
    default of 100,000,000 pixels.

    >>> stdin_limit(1000)
    16785216
    """
    return 8 * max_pixels + STDIN_SLACK


def read_stdin(stream: IO[bytes], max_bytes: int) -> bytes:
    """Read ``stream`` to its end, but refuse more than ``max_bytes`` (``/dev/zero`` never ends).

    Raises ImageError "<stdin>: more than N bytes" once ``max_bytes + 1`` are
    read; the image's header is then checked against the pixel limit as for
    a file, by :func:`load`.
    """
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes:
        block = stream.read(min(1 << 20, max_bytes + 1 - total))
        if not block:
            break
        chunks.append(block)
        total += len(block)
    if total > max_bytes:
        raise ImageError(f"<stdin>: more than {max_bytes:,} bytes, the limit for standard input")
    return b"".join(chunks)


def format_for(path: str, explicit: str | None) -> str:
    """The output format: ``explicit`` if given, else from the file extension."""
    if explicit is not None:
        name = explicit.lower().lstrip(".")
        name = EXTENSIONS.get("." + name, name)
        if name not in FORMATS:
            raise UsageError(f"`format` must be one of {', '.join(FORMATS)}, got {explicit!r}")
        return name
    ext = Path(path).suffix.lower()
    if ext not in EXTENSIONS:
        raise UsageError(
            f"{path}: cannot tell the output format from the extension {ext or '(none)'!r}; "
            f"use one of {', '.join(sorted(EXTENSIONS))} or `format`"
        )
    return EXTENSIONS[ext]


def read_header(
    source: str | bytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int, float]:
    """(height, width, full-intensity value) from the header, without decoding.

    The EXIF orientation is applied to the size; the value is 65535 for 16-bit
    images and 255 otherwise, as :func:`load` will give.
    """
    im = open_image(source, max_pixels)
    w, h = im.size
    try:
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError) as exc:  # e.g. a PNG truncated before its eXIf
        raise ImageError(
            f"{display_name(source)}: cannot read the image's header ({exc})") from None
    max_value = 65535.0 if im.mode.startswith("I") else 255.0
    return (w, h, max_value) if orientation in (5, 6, 7, 8) else (h, w, max_value)


def load(source: str | bytes, *, gray: bool = False,
         max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Read an image file (or its bytes) into a :class:`Picture`.

    Applies the EXIF orientation, takes the first frame of a multi-frame file
    (with a note), expands palettes, converts CMYK and other colour spaces to
    RGB (with a note), and with ``gray`` converts colour to luminance
    (ITU-R 601-2, as Pillow's "L").
    """
    if isinstance(source, str) and stream_format(source) == "npy":
        return load_array(source, gray=gray, max_pixels=max_pixels)
    name, notes = display_name(source), list[str]()
    with warnings_as_notes(name, notes):
        try:
            picture = decode(open_image(source, max_pixels), name, gray=gray)
        except PixelLimitError:
            raise
        except ImageError as exc:
            # what Pillow cannot open or decode, tifffile may: float colour, BigTIFF, zstd
            if not (isinstance(source, str) and stream_format(source) == "tiff"
                    and os.path.isfile(source)):
                raise
            try:
                picture = load_tiff(source, gray=gray, max_pixels=max_pixels)
            except ImageError:
                raise exc from None
    picture.notes.extend(n for n in notes if n not in picture.notes)
    return picture


def decode(im: Any, name: str, *, gray: bool = False, buffer: Any = None) -> Picture:
    """:func:`load` of an image Pillow has opened (and may have decoded); ``name`` for messages.

    ``buffer`` is what :func:`imgconv.opening.decode_into_buffer` decoded
    ``im`` into, if it did; otherwise this tries it, and else decodes as usual.
    """
    notes: list[str] = []
    try:
        if buffer is None:
            buffer = decode_into_buffer(im, gray)
        if buffer is not None:
            # the pixels stay where the decoder wrote them: an RGB view of RGBX, or grey
            width, height = im.size
            pixels = np.frombuffer(buffer, np.uint8, count=width * height * (
                4 if im.mode == "RGB" else 1)).reshape(height, width, -1)
            pixels = pixels[:, :, :3] if im.mode == "RGB" else pixels[:, :, 0]
            icc = im.info.get("icc_profile")
            mode = im.mode
            im.close()
            return Picture(pixels, None, 255.0, "8", mode, icc, notes, **_kept(im))
        wide = wide_colour(im)
        if wide is not None:
            try:
                return _decode_wide(im, wide, name, gray, notes)
            except Exception as exc:  # any failure of the reader: Pillow's 8 bits, noted
                notes.append(f"{name}: 16-bit colour read as 8-bit ({type(exc).__name__}: {exc})")
        try:
            frames = getattr(im, "n_frames", 1)
        except DECODE_ERRORS as exc:  # a later frame's directory is corrupt: not the first
            notes.append(f"{name}: its later frames cannot be read ({type(exc).__name__}: "
                         f"{exc}); only the first is filtered")
            frames = 1
            im.seek(0)
        if frames > 1:
            notes.append(f"{name}: has {frames} frames; only the first is filtered")
            im.seek(0)
        icc = im.info.get("icc_profile")
        im.load()
        kept = _kept(im)
        if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
            from PIL import ImageOps  # 20 ms of imports that most photos do not need

            ImageOps.exif_transpose(im, in_place=True)
    except DECODE_ERRORS as exc:
        raise ImageError(f"{name}: cannot decode the image ({exc})") from None
    mode = im.mode

    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        if mode != "RGBX":
            notes.append(f"{name}: {mode} image converted to RGB")
        icc = None if mode == "CMYK" else icc  # a CMYK profile does not describe RGB pixels
        im = im.convert("RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode.startswith("I;16") and mode != "I;16":
        from PIL import Image

        # Pillow's convert("I;16") from big-endian I;16B clips every value to 255
        im = Image.fromarray(np.asarray(im).astype(np.uint16))
    if gray and im.mode in ("RGB", "RGBA"):
        im = im.convert("LA" if im.mode == "RGBA" else "L")

    if im.mode in ("L", "LA", "RGB", "RGBA"):
        max_value, depth = 255.0, "8"
    elif im.mode in ("I;16", "I"):
        max_value, depth = 65535.0, "16"
    elif im.mode == "F":
        max_value, depth = 255.0, "float"
    else:
        raise ImageError(f"{name}: image mode {im.mode} is not supported")
    has_alpha, one_channel = im.mode in ("LA", "RGBA"), im.mode == "LA"
    arr = _to_array(im)
    im.close()
    del im  # the decoded image goes before the caller allocates more
    if arr.dtype.kind == "f":
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            notes.append(f"{name}: {bad:,} non-finite pixels (NaN/inf)")

    alpha = None
    if has_alpha:
        arr, alpha = arr[:, :, :-1], arr[:, :, -1]
        if one_channel:
            arr = arr[:, :, 0]
    return Picture(np.ascontiguousarray(arr), alpha, max_value, depth, mode, icc, notes, **kept)


def array_depth(array: Any) -> str:
    """The depth an array of results is written at: "float", "16" or "8", by its dtype."""
    kind = array.dtype
    return "float" if kind.kind == "f" else "16" if kind.itemsize == 2 else "8"


def tiff_orientation(page: Any) -> int:
    """A TIFF page's (tifffile's) orientation tag, 1 (top left) when absent."""
    tag = page.tags.get(274)
    try:
        return int(tag.value) if tag is not None else 1
    except (TypeError, ValueError):
        return 1


def upright(array: Any, orientation: int) -> Any:
    """``array`` (numpy or dask, (H, W) or (H, W, C)) turned as its EXIF/TIFF
    ``orientation`` (1-8) says, so that its first row is the top."""
    turn = _UPRIGHT.get(int(orientation))
    return array if turn is None else turn(array)


#: Pillow's transposition for each EXIF orientation, as numpy's: (H, W, C) -> upright
_UPRIGHT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: np.rot90(a, 1),
}


def _decode_wide(im: Any, fmt: str, name: str, gray: bool, notes: list[str]) -> Picture:
    """Decode 16-bit colour at full depth: PNG with pypng, TIFF with tifffile.

    Pillow keeps such images 8 bits a channel. Both readers are pure Python.
    pypng is slow where rows are Paeth-filtered, as most encoders' are: 4.5 s a
    megapixel, 0.26 s unfiltered (2 cores, Python 3.11). tifffile reads raw and
    deflate TIFFs at numpy speed, but needs imagecodecs for LZW, JPEG and other
    codecs: those fail here, and the caller falls back to 8 bits with a note.
    """
    filename = getattr(im, "filename", "")
    stream = None
    if not filename:
        stream = im.fp
        stream.seek(0)
    if fmt == "PNG":
        import png

        with open(filename, "rb") if filename else contextlib.nullcontext(stream) as file:
            width, height, rows, info = png.Reader(file=file).asDirect()
            planes = int(info["planes"])
            arr = np.array(list(rows), dtype=np.uint16).reshape(height, width, planes)
    else:
        import tifffile

        arr = np.asarray(tifffile.imread(filename or stream, key=0))
        if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"tifffile read {arr.dtype} {arr.shape}, not 16-bit RGB(A)")
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        notes.append(f"{name}: has {frames} frames; only the first is filtered")
    turn = _UPRIGHT.get(im.getexif().get(EXIF_ORIENTATION, 1))
    if turn is not None:
        arr = turn(arr)
    kept, icc, mode = _kept(im), im.info.get("icc_profile"), f"{im.mode};16"
    im.close()
    alpha = arr[:, :, 3] if arr.shape[2] == 4 else None
    pixels = arr[:, :, :3]
    if gray:  # ITU-R 601-2, as Pillow's "L"
        luma = pixels @ np.array([299, 587, 114], np.float64) / 1000
        pixels = np.rint(luma).astype(np.uint16)
    return Picture(np.ascontiguousarray(pixels),
                   None if alpha is None else np.ascontiguousarray(alpha),
                   65535.0, "16", mode, icc, notes, **kept)


def _write_png16(stream: IO[bytes], array: NDArray[Any], icc_profile: bytes | None,
                 exif: bytes | None) -> None:
    """A 16-bit RGB PNG (Pillow writes 16 bits of grey only): numpy rows, zlib, CRCs.

    Filter type 0 (none) on every row; zlib level 6, as Pillow's default.
    """
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    height, width, channels = array.shape
    colour = {3: 2, 4: 6}[channels]
    rows = np.zeros((height, 1 + 2 * width * channels), np.uint8)
    rows[:, 1:] = np.ascontiguousarray(array, ">u2").view(np.uint8).reshape(height, -1)
    stream.write(b"\x89PNG\r\n\x1a\n")
    stream.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)))
    if icc_profile:
        stream.write(chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc_profile)))
    if exif:
        stream.write(chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\0\0") else exif))
    stream.write(chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)))
    stream.write(chunk(b"IEND", b""))


def _kept(im: Any) -> dict[str, Any]:
    """What an output keeps of opened image ``im``: its EXIF (upright) and JPEG quantization."""
    raw = im.info.get("exif")
    qtables = getattr(im, "quantization", None) if im.format == "JPEG" else None
    return {"exif": _upright_exif(raw) if isinstance(raw, bytes) and raw else None,
            "qtables": qtables or None}


def _upright_exif(raw: bytes) -> bytes | None:
    """EXIF bytes with the orientation entry of IFD0 set to 1 (the pixels have been turned).

    The block is otherwise kept byte for byte (maker notes and sub-IFDs
    included); one that cannot be parsed is dropped (None).
    """
    data = bytearray(raw)
    start = 6 if data.startswith(b"Exif\0\0") else 0
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[start:start + 2]))
    if order is None:
        return None
    try:
        (ifd,) = struct.unpack_from(order + "I", data, start + 4)
        (count,) = struct.unpack_from(order + "H", data, start + ifd)
        for at in range(start + ifd + 2, start + ifd + 2 + 12 * count, 12):
            tag, kind = struct.unpack_from(order + "HH", data, at)
            if tag == EXIF_ORIENTATION and kind == 3:  # SHORT, held in the entry itself
                struct.pack_into(order + "H", data, at + 8, 1)
    except struct.error:
        return None
    return bytes(data)


def _to_array(im: Any) -> NDArray[Any]:
    """Copy a Pillow image into a new array, a chunk of rows at a time.

    ``np.asarray(im)`` goes through ``im.tobytes()``, which holds two more
    copies of the whole image at its peak. This runs the same "raw" encoder
    ``tobytes`` runs, but copies each chunk straight into the array: one chunk
    of extra memory, and on a 12 MP RGB photo 30 ms against 60 ms for
    ``np.asarray`` and 90 ms for copying bands of ``im.crop``. The encoder is
    Pillow's internal interface; a Pillow that changes it gets the band copy.
    """
    width, height = im.size
    probe = np.asarray(im.crop((0, 0, min(width, 1), min(height, 1))))
    out = np.empty((height, width, *probe.shape[2:]), dtype=probe.dtype)
    if out.size:
        try:
            if im.mode == "1":  # packed bits: one byte per pixel only through asarray
                raise ValueError("mode 1")
            _unpack_into(im, out)
        except (AttributeError, TypeError, ValueError, OSError):
            _copy_bands(im, out)
    return out


#: Bytes per chunk of :func:`_unpack_into`: small enough to stay in the cache.
UNPACK_CHUNK = 1 << 18


def _unpack_into(im: Any, out: NDArray[Any]) -> None:
    from PIL import Image

    flat = out.reshape(-1).view(np.uint8)
    encoder = Image._getencoder(im.mode, "raw", im.mode)
    try:
        encoder.setimage(im.im, (0, 0, *im.size))
        at = 0
        while True:
            _, status, data = encoder.encode(max(UNPACK_CHUNK, im.size[0] * 4))
            flat[at : at + len(data)] = np.frombuffer(data, np.uint8)
            at += len(data)
            if status:
                break
    finally:
        encoder.cleanup()
    if status < 0 or at != flat.size:
        raise ValueError(f"raw encoder status {status} after {at} of {flat.size} bytes")


def _copy_bands(im: Any, out: NDArray[Any], band: int = 64) -> None:
    width, height = im.size
    for top in range(0, height, band):
        out[top : top + band] = np.asarray(im.crop((0, top, width, min(top + band, height))))


def check_format_limits(shape: tuple[int, ...], fmt: str, name: str) -> None:
    """Refuse an image larger than ``fmt`` can hold (:data:`MAX_SIDE`), naming output ``name``."""
    limit = MAX_SIDE.get(fmt)
    if limit is not None and max(shape[:2]) > limit:
        raise ImageError(
            f"{name}: {shape[1]}x{shape[0]} is too large for {FORMATS[fmt][0]}, "
            f"which holds at most {limit:,} pixels a side; use png or tiff"
        )


def output_array(shape: tuple[int, ...], dtype: Any, fmt: str,
                 reuse: NDArray[Any] | None = None) -> NDArray[Any]:
    """An empty array for a result that :func:`encode` will write as ``fmt``.

    For a JPEG an (H, W, 3) uint8 result is a view of an (H, W, 4) buffer:
    Pillow keeps RGB images four bytes a pixel, so it can share that buffer as
    an "RGBX" image and encode it without a copy (on 12 MP: 46 ms and 48 MB
    less). Other formats cannot write RGBX, so they get a plain array.

    ``reuse``, an input that may be overwritten, is returned itself when it
    is such a view of the result's shape: a JPEG decoded straight into RGBX
    (:func:`imgconv.opening.decode_into_buffer`) is then filtered channel by
    channel into its own memory, and a 12 MP photo is held once, not twice.
    """
    if fmt == "jpg" and len(shape) == 3 and shape[2] == 3 and np.dtype(dtype) == np.uint8:
        if reuse is not None and reuse.shape == shape and _rgbx_buffer(reuse) is not None:
            return reuse
        return np.empty((shape[0], shape[1], 4), np.uint8)[:, :, :3]
    return np.empty(shape, dtype)


def _rgbx_buffer(array: NDArray[Any]) -> NDArray[Any] | None:
    """The (H, W, 4) buffer an RGB view of RGBX memory lives in, else None.

    Such views come from :func:`output_array` and from JPEGs decoded into
    RGBX (:func:`imgconv.opening.decode_into_buffer`).
    """
    base = array.base
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        return None
    h, w = array.shape[:2]
    if (isinstance(base, np.ndarray) and base.dtype == np.uint8 and base.flags.c_contiguous
            and base.nbytes == 4 * h * w and array.strides == (4 * w, 4, 1)
            and array.__array_interface__["data"][0] == base.__array_interface__["data"][0]):
        return base.reshape(h, w, 4)
    return None


def _pil_image(array: NDArray[Any], alpha: NDArray[Any] | None, depth: str) -> Any:
    from PIL import Image

    if depth == "float":
        return Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))  # mode F
    if depth == "16":
        return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint16))  # mode I;16
    data = array if alpha is None else np.dstack([array, alpha])
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    mode = "L" if data.ndim == 2 else {2: "LA", 3: "RGB", 4: "RGBA"}.get(data.shape[2])
    if mode is None:
        raise ImageError(f"cannot save {data.shape[2]} channels as an image; use .npy")
    return Image.frombuffer(mode, (data.shape[1], data.shape[0]), data, "raw", mode, 0, 1)


def encode(
    array: NDArray[Any],
    fmt: str,
    stream: IO[bytes],
    *,
    alpha: NDArray[Any] | None = None,
    depth: str = "8",
    quality: int | None = None,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    qtables: Any = None,
    name: str = "<output>",
    compression: str | None = None,
) -> None:
    """Write ``array`` (already mapped to the output dtype, or float for npy) to ``stream``.

    A TIFF with ``compression`` (other than none) is written by tifffile; LZW, zstd and
    JPEG need imagecodecs (the ``scale`` extra).

    ``name`` is the output's, for messages. ``exif`` is kept in JPEG, PNG and
    WebP. A JPEG's quality is ``quality``, else that of a JPEG input's
    ``qtables`` (its quantization), else :data:`JPEG_QUALITY`.
    """
    check_format_limits(array.shape, fmt, name)
    if fmt == "tiff" and compression not in (None, "none"):
        _write_tiff(stream, array, alpha, depth, compression, icc_profile, name)
        return
    if fmt == "npy":
        np.save(stream, np.asarray(array, dtype=np.float32), allow_pickle=False)
        return
    if depth == "float" and array.ndim == 3 and fmt == "tiff":
        import tifffile

        buffer = io.BytesIO()  # (H, W, C) float32 samples: a layer's maps, C_out of them
        tifffile.imwrite(buffer, np.ascontiguousarray(array, dtype=np.float32),
                         photometric="minisblack", planarconfig="contig")
        stream.write(buffer.getbuffer())
        return
    if depth == "16" and array.ndim == 3 and array.shape[2] == 3 and fmt in SIXTEEN_BIT:
        data = np.asarray(array, np.uint16)
        if alpha is not None:
            data = np.dstack([data, np.asarray(alpha, np.uint16)])
        if fmt == "png":
            _write_png16(stream, data, icc_profile, exif)
        else:
            import tifffile

            buffer = io.BytesIO()  # tifffile wants a named file, which os.fdopen's is not
            tifffile.imwrite(buffer, data, photometric="rgb", iccprofile=icc_profile,
                             extrasamples=["unassalpha"] if alpha is not None else None)
            stream.write(buffer.getbuffer())
        return
    rgbx = _rgbx_buffer(array) if fmt == "jpg" and depth == "8" else None
    if rgbx is not None:
        from PIL import Image

        im = Image.frombuffer("RGBX", (rgbx.shape[1], rgbx.shape[0]), rgbx, "raw", "RGBX", 0, 1)
    else:
        im = _pil_image(array, None if fmt in ("jpg", "bmp") else alpha, depth)
    options: dict[str, Any] = {}
    if quality is not None and fmt in ("jpg", "webp"):
        options["quality"] = quality
    elif fmt == "jpg" and qtables:
        options["qtables"] = qtables
    elif fmt == "jpg":
        options["quality"] = JPEG_QUALITY
    if exif and fmt in ("jpg", "png", "webp"):
        options["exif"] = exif
    if (icc_profile and fmt in ("png", "jpg", "tiff", "webp")
            and im.mode in ("L", "RGB", "RGBX", "RGBA")):
        options["icc_profile"] = icc_profile
    im.save(stream, format=FORMATS[fmt][0], **options)


def _write_tiff(stream: IO[bytes], array: NDArray[Any], alpha: NDArray[Any] | None,
                depth: str, compression: str, icc_profile: bytes | None, name: str) -> None:
    """A compressed TIFF of the whole result, through tifffile."""
    import tifffile

    dtype = {"float": np.float32, "16": np.uint16}.get(depth, np.uint8)
    data = np.asarray(array, dtype)
    if alpha is not None:
        data = np.dstack([data, np.asarray(alpha, dtype)])
    layout = tiff_layout(data.shape, dtype, alpha is not None, compression)
    buffer = io.BytesIO()  # tifffile wants a named file, which os.fdopen's is not
    try:
        tifffile.imwrite(buffer, data, iccprofile=icc_profile
                         if layout["photometric"] == "rgb" else None, **layout)
    except (ValueError, ImportError, RuntimeError) as exc:  # a codec that is not installed
        raise ImageError(f"{name}: cannot write a {compression} TIFF ({exc}); LZW, zstd and "
                         "JPEG need imagecodecs: pip install 'imgconv[scale]'") from None
    stream.write(buffer.getbuffer())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The library's words for an output that exists; the CLI checks first and names its flag.
#: what an existing output is told, in the library's words (the CLI names its flag)
ALREADY_EXISTS = "already exists (use `overwrite=True` to replace it)"


def check_replaceable(path: Path) -> None:
    """Refuse to replace what is not a regular file (a link to one is replaced as before)."""
    try:
        kind = file_kind(os.lstat(path).st_mode)
        if kind == "symbolic link":
            kind = file_kind(os.stat(path).st_mode)
    except FileNotFoundError:  # absent, or a dangling link: nothing to protect
        return
    if kind is not None:
        raise ImageError(f"{path}: is a {kind}, not a regular file; refusing to replace it")


def write_atomic(path: Path, write: Any, *, overwrite: bool) -> None:
    """Create ``path`` through a temporary file in its folder, so it is whole or absent.

    ``write(stream)`` fills the temporary file. Without ``overwrite`` the final
    step is ``os.link``, which fails rather than replace a file that appeared
    meanwhile; with it, ``os.replace``. On any failure, including Ctrl-C, the
    temporary file is removed and nothing else is touched. Only a regular file
    (or a link to one) is ever replaced: a folder, device node, FIFO or socket
    is refused before anything is written.
    """
    if overwrite:
        check_replaceable(path)
    folder = path.parent
    # the pid in the name lets a later run tell a killed run's leftover (batch.TEMPORARY_NAME)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".part",
                                    dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            check_replaceable(path)  # again: it may have changed while the data was written
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ImageError(f"{path}: {ALREADY_EXISTS}") from None
            except OSError:
                # file systems without hard links: check, then rename
                if path.exists():
                    raise ImageError(f"{path}: {ALREADY_EXISTS}") from None
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save(
    values: NDArray[Any],
    path: str | Path,
    *,
    output_map: str = "clip",
    max_value: float = 255.0,
    fmt: str | None = None,
    depth: str = "8",
    alpha: NDArray[Any] | None = None,
    quality: int | None = None,
    overwrite: bool = False,
) -> float:
    """Map a float result to image values and write it atomically; returns the clipped fraction.

    ``values`` are in the input's units (``max_value`` is full intensity, 255 for
    8-bit input). ``.npy`` and ``depth="float"`` TIFF get the raw float32 values.
    Refuses to replace an existing file unless ``overwrite``.

    >>> import numpy as np, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> save(np.array([[-3.0, 100.0]]), os.path.join(folder, "x.png"))
    0.5
    """
    from imgconv.pipeline import map_output

    target = Path(path)
    fmt = format_for(str(target), fmt)
    clipped = 0.0
    if fmt == "npy" or depth == "float":
        data, depth = np.asarray(values, dtype=np.float32), "float"
    else:
        out_max = 65535 if depth == "16" else 255
        data, clipped = map_output(values, output_map, scale=out_max / max_value,
                                   out_max=out_max)
        if alpha is not None:
            alpha, _ = map_output(alpha, "clip", scale=out_max / max_value, out_max=out_max)
    check_format_limits(data.shape, fmt, str(target))
    write_atomic(target, lambda s: encode(data, fmt, s, alpha=alpha, depth=depth,
                                          quality=quality, name=str(target)),
                 overwrite=overwrite)
    return clipped
