"""A picture through a pipeline, ready to encode: alpha policy, output depth and mapping."""

from __future__ import annotations

from typing import Any, NamedTuple

from numpy.typing import NDArray

from imgconv.errors import ImageError, UsageError
from imgconv.imageio import SIXTEEN_BIT, Picture, output_array
from imgconv.pipeline.alpha import choose_alpha, follow_geometry, premultiplied
from imgconv.pipeline.mapping import CLIP_WARNING_FRACTION, map_output
from imgconv.pipeline.run import Pipeline


def depth_problem(depth: str, fmt: str) -> str | None:
    """Why ``fmt`` cannot hold ``depth`` ("8", "16", "float"), or None."""
    if depth == "16" and fmt not in SIXTEEN_BIT:
        return f"`depth=16` needs png or tiff output, not {fmt}"
    if depth == "float" and fmt != "tiff":
        return f"`depth=float` needs tiff output, not {fmt}"
    return None


def output_depth(depth: str | None, fmt: str, picture: Picture, channels: int) -> str:
    """The depth a result of ``channels`` is written at: ``depth``, else what the input had
    where ``fmt`` can hold it, else 8."""
    if depth is None:
        if picture.depth == "float" and fmt == "tiff" and channels == 1:
            depth = "float"
        elif picture.depth == "16" and fmt in SIXTEEN_BIT and channels in (1, 3):
            depth = "16"
        else:
            depth = "8"  # float input to png too: the README's "mapped to 8 bits"
    problem = depth_problem(depth, fmt)
    if problem is not None:
        raise UsageError(problem)
    if depth == "16" and channels not in (1, 3):
        raise ImageError(
            f"a {channels}-channel result cannot be written at depth 16 (16-bit images "
            "have one or three channels); use `gray=True`, `depth=8`, `depth=float` or .npy"
        )
    if depth == "8" and channels not in IMAGE_MAPS:
        raise UsageError(maps_problem(channels, fmt))
    return depth


#: how many maps an 8-bit image shows: as grey, or as red, green and blue (a second
#: or fourth map would become the image's alpha, hiding the others)
IMAGE_MAPS = (1, 3)


def maps_problem(maps: int, fmt: str) -> str:
    """What to do with maps an 8-bit ``fmt`` image does not show."""
    return (f"the result has {maps} maps; an 8-bit {fmt} image shows 1 (grey) or 3 "
            f"(as red, green, blue); write one image per map with {{map}} in `name` "
            f"('{{stem}}-{{map}}{{ext}}' with `out_dir`), a picture of them all with "
            f"`montage` FILE.png, or every map to .npy or a float TIFF (`depth=float`)")


def holds_alpha(fmt: str, depth: str, ndim: int) -> bool:
    """Whether a ``fmt`` image at ``depth`` of an ``ndim`` result keeps an alpha plane
    (not JPEG or BMP, nor 16-bit grey)."""
    return fmt not in ("jpg", "bmp") and not (depth == "16" and ndim == 2)


def clipping_note(pipeline: Pipeline, how: str, clipped: float, name: str) -> list[str]:
    """A note when ``how`` clipped more than :data:`CLIP_WARNING_FRACTION` of the values,
    with the maps that would keep them (:meth:`Pipeline.clipping_remedies`); else none."""
    remedies = pipeline.clipping_remedies(how)
    if clipped <= CLIP_WARNING_FRACTION or not remedies:
        return []
    return [f"{name}: {clipped:.1%} of values were clipped by `output_map={how}`; "
            f"try `output_map` {' or '.join(remedies)}"]


class Rendered(NamedTuple):
    """A picture run through the pipeline: what :func:`imgconv.imageio.encode` takes."""

    pixels: NDArray[Any]  # mapped to the output depth's dtype, or float32
    alpha: NDArray[Any] | None  # in the same units
    notes: list[str]


def render(picture: Picture, pipeline: Pipeline, fmt: str, name: str, *, alpha: str = "auto",
           depth: str | None = None, reuse: bool = True) -> Rendered:
    """Run the pipeline on a picture, ready to encode as ``fmt``; ``name`` is for notes.

    ``alpha`` is the alpha policy (:mod:`imgconv.pipeline.alpha`) and ``depth``
    the output depth (None: :func:`output_depth`'s choice). With ``reuse`` the
    result may be written over ``picture.pixels`` (a JPEG decoded into RGBX
    and written as JPEG: :func:`imgconv.imageio.output_array`).
    """
    import numpy as np

    notes: list[str] = []
    alpha_mode = choose_alpha(alpha, pipeline) if picture.alpha is not None else "drop"
    pixels = picture.pixels
    channels = pipeline.out_channels(1 if pixels.ndim == 2 else pixels.shape[2])
    depth = "float" if fmt == "npy" else output_depth(depth, fmt, picture, channels)
    raw = depth == "float"
    out_max = 65535 if depth == "16" else 255
    scale = out_max / picture.max_value
    how = pipeline.output_mapping()

    out_alpha = None
    if alpha_mode == "premultiply":
        values, out_alpha = premultiplied(pipeline, pixels, np.asarray(picture.alpha),
                                          picture.max_value, out_max)
        if raw:
            return Rendered(values.astype(np.float32), None, notes)
        mapped, clipped = map_output(values, how, scale=scale, out_max=out_max)
    else:
        if raw:
            return Rendered(pipeline.run(pixels).astype(np.float32, copy=False), None, notes)
        # the result may go over the input, which nothing reads afterwards (but a check)
        over = pixels if reuse else None
        mapped, clipped = pipeline.run_mapped(
            pixels, how, scale=scale, out_max=out_max,
            allocate=lambda shape, dtype: output_array(shape, dtype, fmt, reuse=over))
        if alpha_mode == "copy":
            out_alpha = follow_geometry(picture.alpha, pipeline)

    notes.extend(clipping_note(pipeline, how, clipped, name))
    if out_alpha is not None and not holds_alpha(fmt, depth, mapped.ndim):
        notes.append(f"{name}: {fmt} {depth}-bit output cannot hold alpha; alpha dropped")
        out_alpha = None
    if out_alpha is not None:
        out_alpha, _ = map_output(out_alpha, "clip", scale=scale, out_max=out_max)
    return Rendered(mapped, out_alpha, notes)
