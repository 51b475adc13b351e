"""One picture through the pipeline: alpha policy, output depth, mapping to image values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from imgconv.batch.tasks import Options
from imgconv.errors import ImageError, UsageError
from imgconv.imageio import (
    SIXTEEN_BIT,
    Picture,
    output_array,
)
from imgconv.pipeline import CLIP_WARNING_FRACTION, ConvStage, Pipeline, PoolStage, map_output

if TYPE_CHECKING:

    pass

ALPHA_MODES = ("auto", "premultiply", "copy", "drop")

def _premultiply_problem(pipeline: Pipeline) -> str | None:
    """Why premultiplied alpha would give wrong colours with this pipeline, or None.

    Colour and alpha go through the same stages in premultiplied form, so a
    kernel bias or a constant border fill (both in colour units) would be
    applied to alpha too, and a multi-channel filter has no per-channel alpha.
    """
    if _has_multichannel_filter(pipeline):
        return "a multi-channel filter"
    for stage in pipeline.conv_stages:
        if any(k.bias for k in stage.members()):
            return f"kernel {stage.spec}, which has a bias"
        if stage.pad_mode == "constant" and stage.cval != 0:
            return "`pad_mode=constant` with a non-zero `cval`"
    return None


def check_alpha_mode(mode: str, pipeline: Pipeline) -> None:
    """Refuse ``alpha="premultiply"`` where it would give wrong colours (see below)."""
    if mode not in ALPHA_MODES:
        raise UsageError(f"`alpha` must be one of {', '.join(ALPHA_MODES)}, got {mode!r}")
    _choose_alpha(mode, pipeline)


def _choose_alpha(mode: str, pipeline: Pipeline) -> str:
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
            a = pool(a, stage.size, stride=stage.stride, op=stage.op)
    return a


def _output_depth(options: Options, fmt: str, picture: Picture, channels: int) -> str:
    depth = options.depth
    if depth is None:
        if picture.depth == "float" and fmt == "tiff" and channels == 1:
            depth = "float"
        elif picture.depth == "16" and fmt in SIXTEEN_BIT and channels in (1, 3):
            depth = "16"
        else:
            depth = "8"  # float input to png too: the README's "mapped to 8 bits"
    if depth == "16" and fmt not in SIXTEEN_BIT:
        raise UsageError(f"`depth=16` needs png or tiff output, not {fmt}")
    if depth == "float" and fmt != "tiff":
        raise UsageError(f"`depth=float` needs tiff output, not {fmt}")
    if depth != "8" and channels != 1 and not (depth == "16" and channels == 3):
        raise ImageError(
            f"a {channels}-channel result cannot be written at depth {depth} (16-bit images "
            "have one or three channels, float ones one); use `gray=True`, `depth=8` or .npy"
        )
    return depth


def _has_multichannel_filter(pipeline: Pipeline) -> bool:
    return any(k.matrix.ndim == 3 for s in pipeline.conv_stages for k in s.members())


class Rendered(NamedTuple):
    """A picture run through the pipeline: what :func:`imgconv.imageio.encode` takes."""

    pixels: Any  # mapped to the output depth's dtype, or float32
    alpha: Any  # in the same units, or None
    notes: list[str]


def render(picture: Picture, options: Options, fmt: str, name: str) -> Rendered:
    """Run the pipeline on a picture, ready to encode as ``fmt``.

    Without ``verify`` the result may be written over ``picture.pixels``
    (a JPEG decoded into RGBX and written as JPEG: :func:`output_array`).
    """
    import numpy as np

    pipeline = options.pipeline
    notes: list[str] = []
    alpha_mode = _choose_alpha(options.alpha, pipeline) if picture.alpha is not None else "drop"
    pixels = picture.pixels
    multichannel = _has_multichannel_filter(pipeline)
    channels = 1 if multichannel or pixels.ndim == 2 else pixels.shape[2]
    depth = "float" if fmt == "npy" else _output_depth(options, fmt, picture, channels)
    raw = depth == "float"
    out_max = 65535 if depth == "16" else 255
    scale = out_max / picture.max_value
    how = pipeline.output_mapping()

    out_alpha = None
    if alpha_mode == "premultiply":
        a = np.asarray(picture.alpha, dtype=np.float32) / np.float32(picture.max_value)
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
        out_alpha = filtered_alpha * np.float32(picture.max_value)
        if raw:
            return Rendered(values.astype(np.float32), None, notes)
        mapped, clipped = map_output(values, how, scale=scale, out_max=out_max)
    else:
        if raw:
            return Rendered(pipeline.run(pixels).astype(np.float32, copy=False), None, notes)
        # the result may go over the input, which nothing reads afterwards but verify
        reuse = None if options.verify else pixels
        mapped, clipped = pipeline.run_mapped(
            pixels, how, scale=scale, out_max=out_max,
            allocate=lambda shape, dtype: output_array(shape, dtype, fmt, reuse=reuse))
        if alpha_mode == "copy":
            out_alpha = follow_geometry(picture.alpha, pipeline)

    remedies = pipeline.clipping_remedies(how)
    if clipped > CLIP_WARNING_FRACTION and remedies:
        notes.append(
            f"{name}: {clipped:.1%} of values were clipped by `output_map={how}`; "
            f"try `output_map` {' or '.join(remedies)}"
        )
    if out_alpha is not None and (fmt in ("jpg", "bmp") or (depth == "16" and mapped.ndim == 2)):
        notes.append(f"{name}: {fmt} {depth}-bit output cannot hold alpha; alpha dropped")
        out_alpha = None
    if out_alpha is not None:
        out_alpha, _ = map_output(out_alpha, "clip", scale=scale, out_max=out_max)
    return Rendered(mapped, out_alpha, notes)
