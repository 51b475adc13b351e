"""The pipeline's stages on dask arrays, block by block through imgconv's own core.

Each stage becomes one layer of the graph (:func:`imgconv.tiled.windows.windowed`):
a convolution block correlates the pixels it gathered with no padding (they
are already padded as the whole image would be); a pooling block reduces its
windows with the divisor the whole image's windows have. Activations and the
channel pick work block by block.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dask.array as da
import numpy as np
from numpy.typing import ArrayLike, NDArray

from imgconv.core.conv import (
    IntPair,
    Padding,
    as_kernel,
    check_image,
    output_shape,
    working_dtype,
)
from imgconv.core.geometry import extent, normalize_pair
from imgconv.core.padding import normalize_pad_mode
from imgconv.core.pooling import (
    POOL_OPS,
    check_pool,
    divide_by_counts,
    reduce_windows,
)
from imgconv.core.pooling import (
    activate as activate_block,
)
from imgconv.errors import ImageError
from imgconv.kernels.model import Kernel
from imgconv.pipeline.stages import ActivationStage, ConvStage, PoolStage, Stage
from imgconv.tiled.windows import Compute, Windows, windowed


def check_array(x: Any, name: str = "image") -> da.Array:
    """``x`` as a dask array of real numbers, (H, W) or (H, W, C), not empty."""
    if not isinstance(x, da.Array):
        x = da.asarray(x)
    check_image(x.shape, x.dtype, name)
    return x


def _chunk_sides(x: da.Array) -> tuple[int, int]:
    """The output blocks' sides: the input's own (largest) chunk sides; the first may be
    an edge's leftover in an array turned upright."""
    return int(max(x.chunks[0])), int(max(x.chunks[1]))


def conv_readers(stage: ConvStage, n: tuple[int, int]) -> list[tuple[Windows, Windows]]:
    """Each member's windows over an image of ``n`` (rows, columns); refuses an empty result."""
    members = stage.members()
    out_h, out_w = stage.out_shape(n)
    if out_h < 1 or out_w < 1:
        try:  # the core's message, naming the geometry
            output_shape(n, members[0].weights.shape, padding=stage.padding_for(members[0]),
                         stride=stage.stride, dilation=stage.dilation)
        except ValueError as exc:
            raise ImageError(f"kernel {members[0].name}: {exc}") from None
    readers = []
    for kernel in members:
        (kh, kw), (top, _, left, _) = kernel.matrix.shape[:2], stage.pads(kernel)
        readers.append((Windows(n[0], top, extent(kh, stage.dilation[0]), stage.stride[0], out_h),
                        Windows(n[1], left, extent(kw, stage.dilation[1]), stage.stride[1],
                                out_w)))
    return readers


def conv_stage(stage: ConvStage, x: da.Array) -> da.Array:
    """A convolution stage (one kernel or a bank) on a dask array."""
    readers = conv_readers(stage, x.shape[:2])
    members = stage.members()
    valid = dataclasses.replace(stage, padding=0)
    # every block sums as the whole image would (the core's choice for the whole shape),
    # so that blocks of different sizes round alike
    whole = np.broadcast_to(np.zeros((), x.dtype), x.shape)
    strategies = [stage.strategy_for(whole, k) if k.channels is None else None
                  for k in members]  # (a (kh, kw, C) filter's channels choose their own)

    def compute(regions: list[NDArray[Any]], block: tuple[int, int, int, int]) -> NDArray[Any]:
        if valid.bank is None:
            return valid.apply_kernel(regions[0], members[0], strategy=strategies[0])
        return valid.fold(valid.apply_kernel(valid.bank_input(r), k, strategy=s)
                          for r, k, s in zip(regions, members, strategies, strict=True))

    return conv_windowed(stage, x, readers, compute)


def conv_windowed(stage: ConvStage, x: da.Array, readers: list[tuple[Windows, Windows]],
                  compute: Compute) -> da.Array:
    """``compute`` over a convolution stage's windows; the output's dtype and channels are
    what it gives for one output pixel's worth of zeros."""
    probe = compute([np.zeros((r.extent, c.extent, *x.shape[2:]), x.dtype) for r, c in readers],
                    (0, 1, 0, 1))
    return windowed(x, readers, compute, mode=stage.pad_mode, fill=stage.cval,
                    chunks=_chunk_sides(x), meta=probe[:0, :0], name="imgconv-conv")


def pool_stage(stage: PoolStage, x: da.Array) -> da.Array:
    """A pooling stage on a dask array: PyTorch's windows, padding and divisor."""
    n = x.shape[:2]
    (kh, kw), (sy, sx) = stage.size, stage.stride or stage.size
    (py, px), (dy, dx) = stage.padding, stage.dilation
    try:
        out_h, out_w = check_pool(n, (kh, kw), (py, px), (dy, dx), (sy, sx), stage.op,
                                  stage.ceil_mode)
    except ValueError as exc:
        raise ImageError(f"pooling: {exc}") from None
    readers = [(Windows(n[0], py, extent(kh, dy), sy, out_h),
                Windows(n[1], px, extent(kw, dx), sx, out_w))]
    dtype = working_dtype(x.dtype)

    def compute(regions: list[NDArray[Any]], block: tuple[int, int, int, int]) -> NDArray[Any]:
        a, b, c, d = block
        region = np.asarray(regions[0], dtype=dtype)
        out = reduce_windows(region, (kh, kw), (sy, sx), (dy, dx), (b - a, d - c), stage.op)
        if stage.op == "avg":
            divide_by_counts(out, n, (kh, kw), (sy, sx), (py, px), stage.count_include_pad,
                             first=(a, c))
        return out

    fill = -np.inf if stage.op == "max" else 0.0
    meta = np.zeros((0, 0, *x.shape[2:]), dtype)
    return windowed(x, readers, compute, mode="constant", fill=fill, chunks=_chunk_sides(x),
                    meta=meta, name="imgconv-pool")


def run_stage(stage: Stage, x: da.Array) -> da.Array:
    """One pipeline stage on a dask array, block by block (:meth:`Pipeline.run`'s)."""
    if isinstance(stage, ConvStage):
        return conv_stage(stage, x)
    if isinstance(stage, PoolStage):
        return pool_stage(stage, x)
    dtype = working_dtype(x.dtype)
    return da.map_blocks(activate_block, x, stage.kind, dtype=dtype,
                         meta=np.zeros((0,) * x.ndim, dtype))


def _kernel_stage(kernel: ArrayLike, flip: bool, padding: Padding, pad_mode: str, cval: float,
                  stride: IntPair, dilation: IntPair) -> ConvStage:
    weights = as_kernel(kernel)
    mode, cval = normalize_pad_mode(pad_mode, cval)
    return ConvStage("kernel", mode="convolve" if flip else "correlate", padding=padding,
                     pad_mode=mode, cval=cval, stride=normalize_pair(stride, "stride"),
                     dilation=normalize_pair(dilation, "dilation"),
                     kernel=Kernel("kernel", weights))


def correlate(image: Any, kernel: ArrayLike, *, padding: Padding = "same",
              pad_mode: str = "reflect", cval: float = 0.0, stride: IntPair = 1,
              dilation: IntPair = 1) -> da.Array:
    """:func:`imgconv.correlate` of a dask array: a dask array, block by block.

    Takes the arguments :func:`imgconv.correlate` takes; the result's blocks
    have the input's chunk sides (in output pixels).

    >>> import dask.array as da, numpy as np
    >>> x = da.from_array(np.arange(36.0).reshape(6, 6), chunks=2)
    >>> correlate(x, [[1, 2, 3]], pad_mode="wrap").compute()[0].tolist()
    [8.0, 8.0, 14.0, 20.0, 26.0, 14.0]
    """
    x = check_array(image)
    stage = _kernel_stage(kernel, False, padding, pad_mode, cval, stride, dilation)
    return _as_value_error(conv_stage, stage, x)


def convolve(image: Any, kernel: ArrayLike, *, padding: Padding = "same",
             pad_mode: str = "reflect", cval: float = 0.0, stride: IntPair = 1,
             dilation: IntPair = 1) -> da.Array:
    """:func:`imgconv.convolve` of a dask array (the kernel flipped), block by block."""
    x = check_array(image)
    stage = _kernel_stage(kernel, True, padding, pad_mode, cval, stride, dilation)
    return _as_value_error(conv_stage, stage, x)


def pool(image: Any, size: IntPair, *, stride: IntPair | None = None, op: str = "max",
         padding: IntPair = 0, dilation: IntPair = 1, ceil_mode: bool = False,
         count_include_pad: bool = True) -> da.Array:
    """:func:`imgconv.pool` of a dask array, block by block."""
    x = check_array(image)
    if op not in POOL_OPS:
        raise ValueError(f"op must be one of {', '.join(POOL_OPS)}, got {op!r}")
    kh, kw = normalize_pair(size, "pool size")
    stage = PoolStage(op, (kh, kw), None if stride is None else normalize_pair(stride,
                                                                              "pool stride"),
                      normalize_pair(padding, "pool padding", minimum=0),
                      normalize_pair(dilation, "pool dilation"), ceil_mode, count_include_pad)
    return _as_value_error(pool_stage, stage, x)


def activate(image: Any, kind: str = "relu") -> da.Array:
    """:func:`imgconv.activate` of a dask array, block by block."""
    x = check_array(image)
    activate_block(np.zeros(1), kind)  # refuses an unknown kind now, not at compute
    return run_stage(ActivationStage(kind), x)


def _as_value_error(build: Any, stage: Any, x: da.Array) -> da.Array:
    """The library's ValueError (not the pipeline's ImageError) for a geometry that fails:
    the core's own message, which the ImageError wraps as its cause."""
    try:
        result: da.Array = build(stage, x)
    except ImageError as exc:
        raise ValueError(str(exc.__context__ or exc)) from None
    return result
