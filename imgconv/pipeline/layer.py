"""The checks on a layer's settings (:class:`~imgconv.pipeline.options.LayerOptions`),
and the stages they make (:func:`build_stages`, :func:`conv_stage`, :func:`pool_stage`).

Messages name the parameters as `name` (see :mod:`imgconv.errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imgconv.core.geometry import PADDING_NAMES, normalize_pair
from imgconv.core.padding import normalize_pad_mode
from imgconv.core.pooling import ACTIVATIONS, POOL_OPS
from imgconv.errors import UsageError
from imgconv.kernels.model import OUTPUT_MAPS, Kernel, KernelBank, suggest
from imgconv.kernels.text import short
from imgconv.pipeline.options import LayerOptions
from imgconv.pipeline.stages import ActivationStage, ConvStage, PoolStage, Stage

CONV_MODES = ("correlate", "convolve")
#: A pipeline's output map: a kernel's own preference (``auto``) or one of the maps
OUTPUT_MAPPINGS = ("auto", *OUTPUT_MAPS)
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The largest padding, stride, dilation or pooling number accepted (2**31 - 1)
MAX_GEOMETRY = 2**31 - 1


def choice(value: object, choices: Sequence[str], name: str) -> str:
    """``value`` if it is one of ``choices``, else a UsageError that lists them.

    >>> choice("max", POOL_OPS, "pool")
    'max'
    """
    if not isinstance(value, str) or value not in choices:
        hint = suggest(value, choices) if isinstance(value, str) else ""
        raise UsageError(f"`{name}` must be one of {', '.join(choices)}, got {short(value)}{hint}")
    return value


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise UsageError(
            f"`{name}` must be whole numbers separated by commas, got {text[:40]!r}"
        ) from None
    if any(abs(n) > MAX_GEOMETRY for n in numbers):
        raise UsageError(f"`{name}` takes numbers up to {MAX_GEOMETRY}, got {text[:40]!r}")
    return numbers


def parse_pair(value: object, name: str) -> tuple[int, int]:
    """``2``, ``"2"``, ``"2,3"`` or ``[2, 3]`` as a pair of ints ``>= 1``.

    >>> parse_pair("2,3", "stride")
    (2, 3)
    """
    if isinstance(value, str):
        parts = _ints(value, name)
        value = parts[0] if len(parts) == 1 else parts
    try:
        return normalize_pair(list(value) if isinstance(value, tuple) else value, f"`{name}`")
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def parse_padding(value: object) -> str | int | tuple[int, ...]:
    """``same``/``valid``/``full``, ``N``, ``N,M`` or ``T,B,L,R`` (strings or YAML values).

    >>> parse_padding("1,2,0,3")
    (1, 2, 0, 3)
    """
    if isinstance(value, str) and value in PADDING_NAMES:
        return value
    parts: tuple[int, ...]
    if isinstance(value, str):
        try:
            parts = tuple(int(part) for part in value.replace(" ", "").split(","))
        except ValueError:
            parts = ()
        else:
            _ints(value, "padding")  # a number past MAX_GEOMETRY says so
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = (value,)
    elif isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        parts = tuple(value)
    else:
        parts = ()
    if len(parts) not in (1, 2, 4) or min(parts, default=-1) < 0:
        raise UsageError(
            f"`padding` must be one of {', '.join(PADDING_NAMES)}, N, N,M or T,B,L,R "
            f"(whole numbers >= 0), got {short(value)}"
        )
    return parts[0] if len(parts) == 1 else parts


def channel_problem(stages: Sequence[Stage], channels: int | None = None) -> str | None:
    """Why a stage's filters (C_in deep) cannot read what comes before them, or None.

    A stack gives C_out maps and a (kh, kw, C_in) filter one; a 2-D kernel keeps the
    count. With ``channels`` (the image's; 1 for a 2-D image) the first filter is
    checked too.

    >>> from imgconv.kernels import from_array
    >>> conv1 = conv_stage("conv1", kernel=from_array(np.zeros((16, 3, 3, 3)), "conv1"))
    >>> conv2 = conv_stage("conv2", kernel=from_array(np.zeros((4, 8, 3, 3)), "conv2"))
    >>> channel_problem([conv1, ActivationStage("relu"), conv2])
    'stage 3 (conv2) takes 8 channels (C_in), but stage 1 (conv1) gives 16 maps (C_out)'
    """
    image = channels is not None
    known = None if channels is None else (channels, "the image has", " channels")
    for n, stage in enumerate(stages, 1):
        if not isinstance(stage, ConvStage):
            continue
        need = stage.in_channels
        if need is None and stage.stacks and known is not None and known[0] != 1:
            need = 1  # a stack of 2-D kernels reads one channel
        if need is not None and known is not None and known[0] != need:
            count, what, unit = known
            hint = "; use `gray=True`" if need == 1 and image and what == "the image has" else ""
            return (f"stage {n} ({stage.spec}) takes {need} channel"
                    f"{'s' if need != 1 else ''} (C_in), but {what} {count}{unit}{hint}")
        if stage.stacks or stage.in_channels is not None:
            count = stage.out_channels(1)
            known = (count, f"stage {n} ({stage.spec}) gives",
                     " maps (C_out)" if count != 1 else " map")
    return None


def build_stages(kernels: Sequence[str], layer: LayerOptions) -> tuple[Stage, ...]:
    """Each kernel a convolution stage with ``layer``'s settings, then its activation and
    pooling, every setting checked (``bias`` goes with one kernel)."""
    if not kernels:
        raise UsageError("give at least one kernel (`kernel`), or a `pipeline` file")
    if layer.bias is not None and len(kernels) > 1:
        raise UsageError("`bias` goes with one `kernel`; give the others their biases in a "
                         "`pipeline` file")
    stages: list[Stage] = [conv_stage(spec, **layer.conv(), bias=layer.bias)
                           for spec in kernels]
    problem = channel_problem(stages)
    if problem is not None:
        raise UsageError(problem)
    choice(layer.activation, ACTIVATIONS, "activation")
    if layer.activation != "none":
        stages.append(ActivationStage(layer.activation))
    if layer.pool is None:
        given = [f"`{name}`" for name in ("pool_size", *LayerOptions.POOL)
                 if str(getattr(layer, name)) != str(getattr(LayerOptions, name))]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise UsageError(f"{' and '.join(given)} {verb} `pool` max|avg")
    else:
        stages.append(pool_stage(layer.pool, layer.pool_size, layer.pool_stride,
                                 padding=layer.pool_padding, dilation=layer.pool_dilation,
                                 ceil_mode=layer.pool_ceil,
                                 count_include_pad=layer.pool_count_pad))
    return tuple(stages)


def conv_stage(
    spec: str,
    *,
    mode: str = LayerOptions.mode,
    padding: object = LayerOptions.padding,
    pad_mode: str = LayerOptions.pad_mode,
    cval: object = LayerOptions.cval,
    stride: object = LayerOptions.stride,
    dilation: object = LayerOptions.dilation,
    kernel: Kernel | KernelBank | None = None,
    bias: object = None,
    base: Path | None = None,
) -> ConvStage:
    """Resolve a kernel spec (unless ``kernel`` is given, already resolved) and check every
    setting; raises UsageError/KernelError.

    ``bias`` (a number, numbers or a .npy file, relative to ``base`` when given) is added
    to the stage's maps: one value, or one per map of a stack (C_out).
    """
    from imgconv.kernels import resolve
    from imgconv.kernels.weights import read_bias, with_bias

    choice(mode, CONV_MODES, "mode")
    pad = parse_padding(padding)
    try:
        canonical, fill = normalize_pad_mode(pad_mode, cval)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc).replace("pad_mode", "`pad_mode`").replace("cval", "`cval`")
                         ) from None
    if abs(fill) > FLOAT32_MAX:  # the stages work in float32: it would become infinity
        raise UsageError(f"`cval` must be within float32's range (about ±3.4e38), got {fill:g}")
    kernel = resolve(spec) if kernel is None else kernel
    if bias is not None:
        kernel = with_bias(kernel, read_bias(bias, base))
    return ConvStage(spec, mode, pad, canonical, fill, parse_pair(stride, "stride"),
                     parse_pair(dilation, "dilation"), kernel)


def pool_stage(op: object, size: object, stride: object = None, *, padding: object = 0,
               dilation: object = 1, ceil_mode: object = False,
               count_include_pad: object = True) -> PoolStage:
    """A pooling stage, checked (its settings named `pool`, `pool_size`, `pool_stride`,
    `pool_padding`, `pool_dilation`, `pool_ceil` and `pool_count_pad`).

    As in PyTorch, the padding is at most half the window and avg takes no dilation.

    >>> pool_stage("max", 3, 2, padding=1, ceil_mode=True).out_shape((8, 8))
    (5, 5)
    """
    choice(op, POOL_OPS, "pool")
    if size is None:
        raise UsageError("`pool` needs `pool_size` N or N,M")
    kh, kw = parse_pair(size, "pool_size")
    pads = _pair_from_zero(padding, "pool_padding")
    if pads[0] > kh // 2 or pads[1] > kw // 2:
        raise UsageError(f"`pool_padding` must be at most half of `pool_size` ({kh // 2},"
                         f"{kw // 2} for {kh}x{kw}), got {pads[0]},{pads[1]}")
    dilations = parse_pair(dilation, "pool_dilation")
    if op == "avg" and dilations != (1, 1):
        raise UsageError("`pool_dilation` applies to `pool` max only (avg pooling has none, "
                         "as in PyTorch)")
    for value, name in ((ceil_mode, "pool_ceil"), (count_include_pad, "pool_count_pad")):
        if not isinstance(value, bool):
            raise UsageError(f"`{name}` must be true or false, got {short(value)}")
    return PoolStage(
        str(op), (kh, kw), None if stride is None else parse_pair(stride, "pool_stride"),
        pads, dilations, bool(ceil_mode), bool(count_include_pad),
    )


def _pair_from_zero(value: object, name: str) -> tuple[int, int]:
    """``0``, ``"1"``, ``"1,2"`` or ``[1, 2]`` as a pair of ints ``>= 0``."""
    if isinstance(value, str):
        parts = _ints(value, name)
        value = parts[0] if len(parts) == 1 else parts
    try:
        return normalize_pair(list(value) if isinstance(value, tuple) else value, f"`{name}`",
                              minimum=0)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
