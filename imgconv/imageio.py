"""The Pillow boundary: read images into arrays, write arrays into image files.

Everything about image modes, bit depth, alpha, EXIF orientation, ICC
profiles and safe (atomic, no-clobber) writing lives here; the rest of the
package sees numpy arrays.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from imgconv.errors import ImageError, UsageError
from imgconv.opening import EXIF_ORIENTATION, decode_into_buffer, display_name, open_image, take

DEFAULT_MAX_PIXELS = 100_000_000
# output format name -> (Pillow format, file extension)
FORMATS = {
    "png": ("PNG", ".png"),
    "jpg": ("JPEG", ".jpg"),
    "tiff": ("TIFF", ".tiff"),
    "webp": ("WEBP", ".webp"),
    "bmp": ("BMP", ".bmp"),
    "npy": ("NPY", ".npy"),
}
EXTENSIONS = {
    ".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".tif": "tiff", ".tiff": "tiff",
    ".webp": "webp", ".bmp": "bmp", ".npy": "npy",
}
# the extensions a folder is searched for
INPUT_EXTENSIONS = (*EXTENSIONS, ".gif", ".pgm", ".ppm", ".pbm", ".pnm", ".tga", ".ico")
DEPTHS = ("8", "16", "float")
SIXTEEN_BIT = ("png", "tiff")


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

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)


def format_for(path: str, explicit: str | None) -> str:
    """The output format: ``explicit`` if given, else from the file extension."""
    if explicit is not None:
        name = explicit.lower().lstrip(".")
        name = EXTENSIONS.get("." + name, name)
        if name not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {explicit!r}")
        return name
    ext = Path(path).suffix.lower()
    if ext not in EXTENSIONS:
        raise UsageError(
            f"{path}: cannot tell the output format from the extension {ext or '(none)'!r}; "
            f"use one of {', '.join(sorted(EXTENSIONS))} or --format"
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
    ahead: Picture | None = take(source, max_pixels, gray)
    if ahead is not None:
        return ahead
    return decode(open_image(source, max_pixels), display_name(source), gray=gray)


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
            return Picture(pixels, None, 255.0, "8", mode, icc, notes)
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            notes.append(f"{name}: has {frames} frames; only the first is filtered")
            im.seek(0)
        icc = im.info.get("icc_profile")
        im.load()
        if im.getexif().get(EXIF_ORIENTATION, 1) != 1:
            from PIL import ImageOps  # 20 ms of imports that most photos do not need

            ImageOps.exif_transpose(im, in_place=True)
    except (OSError, SyntaxError, ValueError) as exc:
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
    elif mode.startswith("I;16"):
        im = im.convert("I;16") if mode != "I;16" else im
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

    alpha = None
    if has_alpha:
        arr, alpha = arr[:, :, :-1], arr[:, :, -1]
        if one_channel:
            arr = arr[:, :, 0]
    return Picture(np.ascontiguousarray(arr), alpha, max_value, depth, mode, icc, notes)


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
) -> None:
    """Write ``array`` (already mapped to the output dtype, or float for npy) to ``stream``."""
    if fmt == "npy":
        np.save(stream, np.asarray(array, dtype=np.float32), allow_pickle=False)
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
    if (icc_profile and fmt in ("png", "jpg", "tiff", "webp")
            and im.mode in ("L", "RGB", "RGBX", "RGBA")):
        options["icc_profile"] = icc_profile
    im.save(stream, format=FORMATS[fmt][0], **options)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Any, *, overwrite: bool) -> None:
    """Create ``path`` through a temporary file in its folder, so it is whole or absent.

    ``write(stream)`` fills the temporary file. Without ``overwrite`` the final
    step is ``os.link``, which fails rather than replace a file that appeared
    meanwhile; with it, ``os.replace``. On any failure, including Ctrl-C, the
    temporary file is removed and nothing else is touched.
    """
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
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ImageError(
                    f"{path}: already exists (use --overwrite to replace it)"
                ) from None
            except OSError:
                # file systems without hard links: check, then rename
                if path.exists():
                    raise ImageError(
                        f"{path}: already exists (use --overwrite to replace it)"
                    ) from None
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
    write_atomic(target, lambda s: encode(data, fmt, s, alpha=alpha, depth=depth,
                                          quality=quality), overwrite=overwrite)
    return clipped
