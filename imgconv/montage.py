"""A picture of a layer's feature maps: the input beside a grid of its maps, each
normalised on its own and labelled (what a learner wants to look at)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.imageio import Picture

#: the smallest side a map is shown at: small maps (after pooling) are enlarged by a whole
#: factor, pixel for pixel, so that their pixels stay visible
MIN_CELL = 160
#: the largest side: larger maps are shrunk to it
MAX_CELL = 320
LABEL_HEIGHT = 20
GAP = 6


def normalise(plane: NDArray[Any]) -> NDArray[np.uint8]:
    """A map stretched from its own minimum (black) to maximum (white); a constant map is
    mid-grey.

    >>> normalise(np.array([[-1.0, 0.0, 3.0]])).tolist()
    [[0, 64, 255]]
    """
    x = np.asarray(plane, dtype=np.float64)
    finite = x[np.isfinite(x)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi <= lo:
        return np.full(x.shape, 128, np.uint8)
    out: NDArray[np.uint8] = np.round(np.clip((np.nan_to_num(x, nan=lo) - lo) / (hi - lo), 0, 1)
                                      * 255).astype(np.uint8)
    return out


def montage(picture: Picture, maps: NDArray[Any], names: Sequence[str] = (),
            title: str = "") -> NDArray[np.uint8]:
    """The input beside a grid of ``maps`` ((H, W) or (H, W, C)), as an RGB array.

    Each map is normalised on its own (:func:`normalise`) and labelled with its
    name (default: its index) and its value range.
    """
    from PIL import Image, ImageDraw

    stack = maps[:, :, None] if maps.ndim == 2 else maps
    count = stack.shape[2]
    labels = list(names) if len(names) == count else [str(i) for i in range(count)]
    h, w = stack.shape[:2]
    side = max(h, w)
    scale = max(1, math.ceil(MIN_CELL / side)) if side < MIN_CELL else min(1.0, MAX_CELL / side)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    # the input at the cells' height, its own aspect kept
    source = _as_rgb(picture)
    ih = ch * min(rows, 2) + (LABEL_HEIGHT + GAP) * (min(rows, 2) - 1)
    iw = max(1, round(source.width * ih / source.height))
    source = source.resize((iw, ih), Image.Resampling.LANCZOS)
    width = GAP + iw + 2 * GAP + cols * (cw + GAP)
    height = GAP + LABEL_HEIGHT + max(ih + LABEL_HEIGHT, rows * (ch + LABEL_HEIGHT + GAP))
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((GAP, GAP), title or f"{count} maps, each normalised on its own", fill=(0, 0, 0),
              font=font)
    top = GAP + LABEL_HEIGHT
    canvas.paste(source, (GAP, top))
    draw.text((GAP, top + ih + 2), "input", fill=(0, 0, 0), font=font)
    left = GAP + iw + 2 * GAP
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    for m in range(count):
        r, c = divmod(m, cols)
        x0, y0 = left + c * (cw + GAP), top + r * (ch + LABEL_HEIGHT + GAP)
        plane = stack[:, :, m]
        cell = Image.fromarray(normalise(plane)).resize((cw, ch), resample)
        canvas.paste(cell.convert("RGB"), (x0, y0))
        finite = plane[np.isfinite(plane)]
        span = f": {float(finite.min()):.3g} .. {float(finite.max()):.3g}" if finite.size else ""
        draw.text((x0, y0 + ch + 2), _fit(f"{labels[m]}{span}", cw, font, draw),
                  fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _as_rgb(picture: Picture) -> Any:
    from PIL import Image

    x = np.asarray(picture.pixels, dtype=np.float64) / picture.max_value * 255
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim == 3:
        x = x[:, :, :3] if x.shape[2] >= 3 else x[:, :, :1].repeat(3, axis=2)
    return Image.fromarray(np.ascontiguousarray(x)).convert("RGB")


def _font() -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=13)
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _fit(text: str, width: int, font: Any, draw: Any) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


def write_montage(path: str | Path, picture: Picture, pipeline: Any, *,
                  overwrite: bool = False) -> tuple[int, ...]:
    """Run ``pipeline`` on ``picture`` and write the montage of its maps to ``path`` (PNG,
    or as its extension says); returns the maps' shape."""
    from PIL import Image

    from imgconv.imageio import write_atomic

    maps = pipeline.run(picture.pixels)
    names = pipeline.map_names()
    title = f"{pipeline.name}: {maps.shape[2] if maps.ndim == 3 else 1} maps " \
            f"{maps.shape[0]}x{maps.shape[1]}, each normalised on its own"
    rgb = montage(picture, maps, names, title)
    gray = bool((rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all())
    image = Image.fromarray(np.ascontiguousarray(rgb[:, :, 0]) if gray else rgb)  # a third
    fmt = "PNG" if Path(path).suffix.lower() not in (".jpg", ".jpeg") else "JPEG"
    write_atomic(Path(path), lambda stream: image.save(stream, format=fmt), overwrite=overwrite)
    return tuple(maps.shape)
