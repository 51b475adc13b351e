"""A lazy picture through a pipeline, ready to write: :func:`imgconv.pipeline.render.render`
for dask arrays, with the same alpha policies, output depths and output maps.

``normalize`` needs the whole result's range: it is computed first, in a
pass of its own, and each chunk is then mapped with it. The other maps work
chunk by chunk. The clipped and non-finite values are counted as chunks are
mapped (in this process: the threaded scheduler).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import dask.base
import numpy as np
from numpy.typing import NDArray

from imgconv.imageio import ARRAY_FORMATS, Picture
from imgconv.pipeline.alpha import choose_alpha, follow_geometry, premultiplied
from imgconv.pipeline.mapping import map_values, out_dtype
from imgconv.pipeline.render import holds_alpha, output_depth
from imgconv.pipeline.run import Pipeline
from imgconv.pipeline.stages import ConvStage
from imgconv.tiled.files import Source
from imgconv.tiled.ops import conv_readers, conv_windowed


def from_picture(picture: Picture, chunk: tuple[int, int]) -> Source:
    """A decoded picture as a Source of chunked arrays, (rows, columns) a chunk."""
    pixels = da.from_array(picture.pixels, chunks=(*chunk, -1)[:picture.pixels.ndim])
    alpha = None if picture.alpha is None else da.from_array(picture.alpha, chunks=chunk)
    return Source(pixels, alpha, picture.max_value, picture.depth, list(picture.notes),
                  picture.icc_profile)


@dataclass
class _Counts:
    """Clipped and non-finite values, added to by the chunks as they are mapped."""

    clipped: int = 0
    bad: int = 0
    size: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, clipped: int, bad: int, size: int) -> None:
        with self.lock:
            self.clipped += clipped
            self.bad += bad
            self.size += size


@dataclass
class Rendered:
    """The lazy result: ``pixels`` mapped to the output's dtype (or float32), ``alpha``."""

    pixels: da.Array
    alpha: da.Array | None
    how: str | None  # the output map; None for the float values as computed
    notes: list[str]
    counts: _Counts

    def with_alpha(self) -> da.Array:
        """The pixels with alpha as a last channel (when there is alpha)."""
        if self.alpha is None:
            return self.pixels
        pixels = self.pixels if self.pixels.ndim == 3 else self.pixels[:, :, None]
        return da.concatenate([pixels, self.alpha[:, :, None]], axis=2)

    def clipped_fraction(self) -> float:
        return self.counts.clipped / max(self.counts.size, 1)

    def non_finite(self) -> int:
        return self.counts.bad


def _mapped(values: da.Array, how: str, scale: float, out_max: int, counts: _Counts | None,
            span: tuple[float, float] | None) -> da.Array:
    def block(v: NDArray[Any]) -> NDArray[Any]:
        mapped, clipped, bad = map_values(v, how, scale=scale, out_max=out_max, span=span)
        if counts is not None:
            counts.add(clipped, bad, v.size)
        return mapped

    dtype = out_dtype(out_max)
    return da.map_blocks(block, values, dtype=dtype, meta=np.zeros((0,) * values.ndim, dtype))


def _fused(pixels: da.Array, pipeline: Pipeline, how: str, scale: float, out_max: int,
           counts: _Counts) -> da.Array:
    """A pipeline that :meth:`Pipeline.fuses` ``how``, each chunk filtered and mapped in one
    pass by :meth:`Pipeline.run_mapped` (its integer path too)."""
    conv, *rest = pipeline.stages
    assert isinstance(conv, ConvStage)
    block_pipeline = dataclasses.replace(
        pipeline, stages=(dataclasses.replace(conv, padding=0), *rest))

    probed = False  # the first call is conv_windowed's probe of the dtype: not counted

    def compute(regions: list[NDArray[Any]], block: tuple[int, int, int, int]) -> NDArray[Any]:
        mapped, fraction = block_pipeline.run_mapped(regions[0], how, scale=scale,
                                                     out_max=out_max)
        if probed:
            counts.add(round(fraction * mapped.size), 0, mapped.size)
        return mapped

    result = conv_windowed(conv, pixels, conv_readers(conv, pixels.shape[:2]), compute)
    probed = True
    return result


def result_span(values: da.Array, scale: float) -> tuple[float, float]:
    """The (min, max) of the finite values times ``scale`` (a pass over the result)."""
    v = values * np.asarray(scale, values.dtype)
    finite = da.isfinite(v)
    lo, hi, any_finite = dask.base.compute(da.where(finite, v, np.inf).min(),
                                      da.where(finite, v, -np.inf).max(), finite.any())
    return (float(lo), float(hi)) if any_finite else (0.0, 0.0)


def render(source: Source, pipeline: Pipeline, fmt: str, name: str, *, alpha: str = "auto",
           depth: str | None = None) -> Rendered:
    """Run the pipeline lazily on ``source``, ready to write as ``fmt``; ``name`` is for notes."""
    notes: list[str] = []
    counts = _Counts()
    alpha_mode = choose_alpha(alpha, pipeline) if source.alpha is not None else "drop"
    pixels = source.pixels
    channels = pipeline.out_channels(1 if pixels.ndim == 2 else pixels.shape[2])
    depth = "float" if fmt in ARRAY_FORMATS else output_depth(depth, fmt, source, channels)  # type: ignore[arg-type]
    raw = depth == "float"
    out_max = 65535 if depth == "16" else 255
    scale = out_max / source.max_value
    how = pipeline.output_mapping()

    out_alpha = values = None
    if alpha_mode == "premultiply":
        values, out_alpha = premultiplied(pipeline, pixels, source.alpha, source.max_value,
                                          out_max)
    elif alpha_mode == "copy":
        out_alpha = follow_geometry(source.alpha, pipeline)
    if raw:
        values = pipeline.run(pixels) if values is None else values
        return Rendered(values.astype(np.float32), None, None, notes, counts)
    if values is None and pipeline.fuses(how):
        mapped = _fused(pixels, pipeline, how, scale, out_max, counts)
    else:
        values = pipeline.run(pixels) if values is None else values
        span = result_span(values, scale) if how == "normalize" else None
        mapped = _mapped(values, how, scale, out_max, counts, span)
    if out_alpha is not None and not holds_alpha(fmt, depth, mapped.ndim):
        notes.append(f"{name}: {fmt} {depth}-bit output cannot hold alpha; alpha dropped")
        out_alpha = None
    if out_alpha is not None:
        out_alpha = _mapped(out_alpha, "clip", scale, out_max, None, None)
    return Rendered(mapped, out_alpha, how, notes, counts)
