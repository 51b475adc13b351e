"""Transparency: how an alpha plane goes through a pipeline (premultiplied, copied or dropped).

``premultiply`` filters colour weighted by alpha and alpha itself, then
divides: a blur then never bleeds the colour of transparent pixels. It is
wrong where stages add colour-unit constants (a bias, a constant border) or
mix channels, so ``auto`` takes it only for non-negative kernels without
those; ``copy`` carries alpha through the stages' geometry unfiltered.
"""

from __future__ import annotations

from typing import Any

from imgconv.errors import UsageError
from imgconv.pipeline.layer import choice
from imgconv.pipeline.run import Pipeline, is_dask
from imgconv.pipeline.stages import ConvStage, PoolStage

ALPHA_MODES = ("auto", "premultiply", "copy", "drop")


def _premultiply_problem(pipeline: Pipeline) -> str | None:
    """Why premultiplied alpha would give wrong colours with this pipeline, or None.

    Colour and alpha go through the same stages in premultiplied form, so a
    kernel bias or a constant border fill (both in colour units) would be
    applied to alpha too, and a multi-channel filter has no per-channel alpha.
    """
    if has_multichannel_filter(pipeline):
        return "a multi-channel filter"
    for stage in pipeline.conv_stages:
        if any(k.bias for k in stage.members()):
            return f"kernel {stage.spec}, which has a bias"
        if stage.pad_mode == "constant" and stage.cval != 0:
            return "`pad_mode=constant` with a non-zero `cval`"
    return None


def check_alpha_mode(mode: str, pipeline: Pipeline) -> None:
    """Refuse ``alpha="premultiply"`` where it would give wrong colours (see below)."""
    choose_alpha(choice(mode, ALPHA_MODES, "alpha"), pipeline)


def choose_alpha(mode: str, pipeline: Pipeline) -> str:
    problem = _premultiply_problem(pipeline)
    if mode == "premultiply" and problem is not None:
        raise UsageError(f"`alpha=premultiply` cannot be used with {problem}; use `alpha=copy`")
    if mode != "auto":
        return mode
    if pipeline.all_weights_nonnegative() and problem is None:
        return "premultiply"
    return "copy"


def follow_geometry(alpha: Any, pipeline: Pipeline) -> Any:
    """Carry an alpha plane through the stages' geometry without filtering it.

    Each convolution stage samples the alpha under its kernel's anchor (a
    delta kernel with the stage's padding, stride and dilation, nearest
    border); pooling stages pool it with the same window.
    """
    import numpy as np

    correlate: Any
    pool: Any
    if is_dask(alpha):  # a lazy plane: the tiled path's namesakes, block by block
        from imgconv.tiled.ops import correlate, pool

        a = alpha.astype(np.float32)
    else:
        from imgconv.core.conv import correlate
        from imgconv.core.pooling import pool

        a = np.asarray(alpha, dtype=np.float32)
    for stage in pipeline.stages:
        if isinstance(stage, ConvStage):
            kernel = stage.members()[0]
            kh, kw = kernel.matrix.shape[:2]
            ay, ax = kernel.anchor if kernel.anchor is not None else (kh // 2, kw // 2)
            if stage.mode == "convolve":
                ay, ax = kh - 1 - ay, kw - 1 - ax
            delta = np.zeros((kh, kw))
            delta[ay, ax] = 1.0
            a = correlate(a, delta, padding=stage.pads(kernel), pad_mode="nearest",
                          stride=stage.stride, dilation=stage.dilation)
        elif isinstance(stage, PoolStage):
            a = pool(a, stage.size, stride=stage.stride, op=stage.op, padding=stage.padding,
                     dilation=stage.dilation, ceil_mode=stage.ceil_mode,
                     count_include_pad=stage.count_include_pad)
    return a


def premultiplied(pipeline: Pipeline, pixels: Any, alpha: Any, max_value: float,
                  out_max: int) -> tuple[Any, Any]:
    """Filter colour weighted by alpha and alpha itself, then divide: (values, alpha), both
    in the input's units. numpy arrays or dask arrays (block by block) alike.
    """
    import numpy as np

    a = alpha.astype(np.float32) / np.float32(max_value)
    weighted = pixels * (a[:, :, None] if pixels.ndim == 3 else a)
    filtered = pipeline.run(weighted)
    filtered_alpha = pipeline.run(a)
    # float rounding leaves ~1e-7 where the blurred alpha is really 0; dividing by it
    # would blow colour up, so alpha under half an output level counts as transparent
    covered = filtered_alpha > 0.5 / out_max
    divisor = np.where(covered, filtered_alpha, 1)
    if filtered.ndim == 3:
        covered, divisor = covered[:, :, None], divisor[:, :, None]
    values = np.where(covered, filtered / divisor, 0).astype(filtered.dtype)
    return values, filtered_alpha * np.float32(max_value)


def has_multichannel_filter(pipeline: Pipeline) -> bool:
    """Whether a stage sums channels (a (kh, kw, C) filter) or stacks maps: the result's
    channels are not the input's, so no alpha goes with each."""
    return pipeline.mixes_channels
