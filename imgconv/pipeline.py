"""A CNN-style layer stack: convolution stages, activation, pooling, then an output mapping.

Built from command-line-like options (:meth:`Pipeline.from_options`) or from a
YAML file (:meth:`Pipeline.from_yaml`); both build the same object. Running it
keeps every intermediate result in floating point.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.core.geometry import (
    PADDING_NAMES,
    Geometry,
    normalize_pair,
    resolve_padding,
    same_pads,
)
from imgconv.core.padding import normalize_pad_mode
from imgconv.core.pooling import ACTIVATIONS, POOL_OPS
from imgconv.errors import ImageError, UsageError

#: ``allocate(shape, dtype)``: makes an output array, as ``np.empty`` does
Allocate = Callable[[tuple[int, ...], Any], NDArray[Any]]

CONV_MODES = ("correlate", "convolve")
OUTPUT_MAPPINGS = ("auto", "clip", "abs", "offset", "normalize")
CLIP_WARNING_FRACTION = 0.05


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choice(value: object, choices: Sequence[str], name: str) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = _suggest(value, choices) if isinstance(value, str) else ""
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}{hint}")
    return value


FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The largest padding, stride, dilation or pooling number accepted (2**31 - 1)
MAX_GEOMETRY = 2**31 - 1


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise UsageError(
            f"{name} must be whole numbers separated by commas, got {text[:40]!r}"
        ) from None
    if any(abs(n) > MAX_GEOMETRY for n in numbers):
        raise UsageError(f"{name} takes numbers up to {MAX_GEOMETRY}, got {text[:40]!r}")
    return numbers


def parse_pair(value: object, name: str) -> tuple[int, int]:
    """``2``, ``"2"``, ``"2,3"`` or ``[2, 3]`` as a pair of ints ``>= 1``.

    >>> parse_pair("2,3", "--stride")
    (2, 3)
    """
    if isinstance(value, str):
        parts = _ints(value, name)
        value = parts[0] if len(parts) == 1 else parts
    try:
        return normalize_pair(list(value) if isinstance(value, tuple) else value, name)
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
            parts = _ints(value, "--padding")
        except UsageError:
            parts = ()
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = (value,)
    elif isinstance(value, list) and all(isinstance(v, int) for v in value):
        parts = tuple(value)
    else:
        parts = ()
    if len(parts) not in (1, 2, 4) or min(parts, default=-1) < 0:
        raise UsageError(
            f"--padding must be one of {', '.join(PADDING_NAMES)}, N, N,M or T,B,L,R "
            f"(whole numbers >= 0), got {value!r}"
        )
    return parts[0] if len(parts) == 1 else parts


@dataclass(frozen=True)
class ConvStage:
    """Correlate (or convolve) with a kernel or a kernel bank."""

    spec: str
    mode: str = "correlate"
    padding: str | int | tuple[int, ...] = "same"
    pad_mode: str = "reflect"
    cval: float = 0.0
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    kernel: Any = field(default=None, compare=False, repr=False)

    def members(self) -> tuple[Any, ...]:
        """The plain kernels this stage applies (one, or a bank's members)."""
        return tuple(getattr(self.kernel, "kernels", (self.kernel,)))

    def _padding_for(self, kernel: Any) -> Any:
        if self.padding != "same" or kernel.anchor is None:
            return self.padding
        kh, kw = kernel.matrix.shape[:2]
        (ay, ax), (dy, dx) = kernel.anchor, self.dilation
        if self.mode == "convolve":
            # convolve() flips the kernel, which moves the anchor to k - 1 - a
            ay, ax = kh - 1 - ay, kw - 1 - ax
        return (*same_pads(kh, dy, ay), *same_pads(kw, dx, ax))

    def pads(self, kernel: Any) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding as the core will apply it."""
        kh, kw = kernel.matrix.shape[:2]
        padding = self._padding_for(kernel)
        pads = resolve_padding(padding, (kh, kw), self.dilation)
        if padding == "same" and self.mode == "convolve":
            pads = (pads[1], pads[0], pads[3], pads[2])
        return pads

    def apply_kernel(self, x: NDArray[Any], kernel: Any, rows: tuple[int, int] | None = None,
                     strategy: str | None = None) -> NDArray[Any]:
        """The response to one kernel; with ``rows = (r0, r1)``, only those output rows.

        Rows ``r0 .. r1 - 1`` of the whole response: the image rows they read,
        with the padding that falls inside them (:meth:`band_of`). ``strategy``
        (None: the core's choice for what it is given) is the one the whole
        image takes (:meth:`strategy_for`), so that a band computes the same.
        """
        from imgconv.core.conv import _correlate

        padding = self._padding_for(kernel)
        if rows is not None:
            (a, b), padding = self.band_of(kernel, x.shape[0], *rows)
            x = x[a:b]
        try:
            out = _correlate(
                x, kernel.weights, padding=padding, pad_mode=self.pad_mode,
                cval=self.cval, stride=self.stride, dilation=self.dilation,
                flip=self.mode == "convolve", strategy=strategy,
            )
        except ValueError as exc:
            raise ImageError(f"kernel {kernel.name}: {exc}") from None
        if kernel.bias:
            out += kernel.bias
        return out

    def strategy_for(self, x: NDArray[Any], kernel: Any) -> str:
        """The core's strategy for ``kernel`` on the whole of ``x``; raises as it would."""
        from imgconv.core.conv import _prepare
        from imgconv.core.strategies import choose_strategy

        _, weights, geom, _, _ = _prepare(
            x, kernel.weights, padding=self._padding_for(kernel), pad_mode=self.pad_mode,
            cval=self.cval, stride=self.stride, dilation=self.dilation,
            flip=self.mode == "convolve")
        return choose_strategy(weights, geom)

    def band_of(self, kernel: Any, height: int, r0: int, r1: int
                ) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """The image rows ``[a, b)`` and padding that give output rows ``r0 .. r1 - 1``.

        Padding is kept only where the band meets the image's top or bottom;
        inside, the band reads the image's own rows.
        """
        top, _, left, right = self.pads(kernel)
        ey = (kernel.matrix.shape[0] - 1) * self.dilation[0] + 1
        first = r0 * self.stride[0] - top  # image row of the band's first padded row
        end = (r1 - 1) * self.stride[0] - top + ey
        a, b = max(0, first), min(height, end)
        return (a, b), (a - first, end - b, left, right)

    def run(self, x: NDArray[Any], rows: tuple[int, int] | None = None,
            strategies: Sequence[str | None] | None = None) -> NDArray[Any]:
        """The stage's response to ``x``; with ``rows``, only those output rows.

        ``strategies``: one per member (:meth:`members`), as for :meth:`apply_kernel`.
        """
        members = self.members()
        chosen = list(strategies) if strategies is not None else [None] * len(members)
        if not hasattr(self.kernel, "kernels"):
            return self.apply_kernel(x, self.kernel, rows, chosen[0])
        # A bank folds each member's response into one accumulator as it comes, so two
        # planes are alive rather than one per member; the arithmetic and its order are
        # imgconv.kernels.combine's.
        how = self.kernel.combine
        acc = self.apply_kernel(x, members[0], rows, chosen[0])
        if how == "magnitude":
            np.multiply(acc, acc, out=acc)
        for kernel, strategy in zip(members[1:], chosen[1:], strict=True):
            response = self.apply_kernel(x, kernel, rows, strategy)
            if how == "magnitude":
                np.multiply(response, response, out=response)
                acc += response
            elif how in ("sum", "mean"):
                acc += response
            elif how == "max":
                np.maximum(acc, response, out=acc)
            else:
                np.minimum(acc, response, out=acc)
            del response
        if how == "magnitude":
            np.sqrt(acc, out=acc)
        elif how == "mean":
            acc /= len(members)
        return acc

    def out_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        kernel = self.members()[0]
        geom = Geometry(shape, kernel.matrix.shape[:2], self.pads(kernel), self.stride,
                        self.dilation)
        return geom.out_shape

    def value_range(self, lo: float, hi: float) -> tuple[float, float]:
        if self.pad_mode == "constant":
            lo, hi = min(lo, self.cval), max(hi, self.cval)
        ranges = []
        for k in self.members():
            w = np.asarray(k.weights, dtype=np.float64)
            pos, neg = float(w[w > 0].sum()), float(w[w < 0].sum())
            ranges.append((pos * lo + neg * hi + k.bias, pos * hi + neg * lo + k.bias))
        if not hasattr(self.kernel, "kernels"):
            return ranges[0]
        los, his = [r[0] for r in ranges], [r[1] for r in ranges]
        how = self.kernel.combine
        if how == "magnitude":
            return 0.0, math.sqrt(sum(max(a * a, b * b) for a, b in ranges))
        if how == "max":
            return max(los), max(his)
        if how == "min":
            return min(los), min(his)
        if how == "sum":
            return sum(los), sum(his)
        return sum(los) / len(los), sum(his) / len(his)

    def parameter_count(self) -> int:
        return sum(int(np.asarray(k.matrix).size) + (1 if k.bias else 0) for k in self.members())


@dataclass(frozen=True)
class ActivationStage:
    """The detector stage: relu, abs or none."""

    kind: str

    def run(self, x: NDArray[Any], *, in_place: bool = False) -> NDArray[Any]:
        """The activation of ``x``; with ``in_place``, of a float array nothing else holds,
        written over it (a 12 MP float32 plane fewer at the peak)."""
        from imgconv.core.conv import working_dtype
        from imgconv.core.pooling import activate

        in_place = in_place and x.dtype == working_dtype(x.dtype)
        return activate(x, self.kind, out=x if in_place else None)

    def value_range(self, lo: float, hi: float) -> tuple[float, float]:
        if self.kind == "relu":
            return max(lo, 0.0), max(hi, 0.0)
        if self.kind == "abs":
            if lo >= 0:
                return lo, hi
            return (-hi, -lo) if hi <= 0 else (0.0, max(-lo, hi))
        return lo, hi


@dataclass(frozen=True)
class PoolStage:
    """Max or average pooling (stride defaults to the size)."""

    op: str
    size: tuple[int, int]
    stride: tuple[int, int] | None = None

    def run(self, x: NDArray[Any]) -> NDArray[Any]:
        from imgconv.core.pooling import pool

        try:
            return pool(x, self.size, stride=self.stride, op=self.op)
        except ValueError as exc:
            raise ImageError(f"pooling: {exc}") from None

    def out_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        (kh, kw), (sy, sx) = self.size, self.stride or self.size
        return (shape[0] - kh) // sy + 1, (shape[1] - kw) // sx + 1

    def value_range(self, lo: float, hi: float) -> tuple[float, float]:
        return lo, hi


Stage = ConvStage | ActivationStage | PoolStage

#: Convolution rows per band when a pooling stage follows (:meth:`Pipeline.run`):
#: 8 MiB of float32 response at a time for a 4000-pixel-wide image.
BAND_ROWS = 512


@dataclass(frozen=True)
class Pipeline:
    """Stages run in order, then ``output`` maps the float result to image values."""

    stages: tuple[Stage, ...]
    output: str = "auto"

    @property
    def conv_stages(self) -> tuple[ConvStage, ...]:
        return tuple(s for s in self.stages if isinstance(s, ConvStage))

    @property
    def name(self) -> str:
        """The kernel specs joined by '+', for output file names."""
        return "+".join(s.spec for s in self.conv_stages)

    def run(self, x: NDArray[Any]) -> NDArray[Any]:
        """Run every stage on an (H, W) or (H, W, C) array; returns float32 or float64.

        Every stage returns a new array, so an activation after the first stage
        works in place on its input, which no one else holds. A convolution
        followed by pooling (with activations between) runs in bands of rows
        (:meth:`_pooled_in_bands`), so that its full-size response is never
        held whole.
        """
        stages = self.stages
        banded = self._pooled_in_bands(x)
        if banded is not None:
            x, stages = banded
        for i, stage in enumerate(stages):
            if isinstance(stage, ActivationStage) and (i or banded is not None):
                x = stage.run(x, in_place=True)
            else:
                x = stage.run(x)
        return x

    def _pooled_in_bands(self, x: NDArray[Any]) -> tuple[NDArray[Any], tuple[Stage, ...]] | None:
        """Run conv -> activations -> pool in bands of pooled rows; the result and the rest.

        Each band computes only the convolution rows its pooling windows read
        (:meth:`ConvStage.run`'s ``rows``), so a 12 MP float32 response (46 MiB
        a channel) is held a band at a time. Each band takes the strategy the
        whole image would, so the sums are the same: to the bit for the direct
        sum, and within float rounding where FFT blocks or BLAS products (long
        separable filters) follow the band. Returns None, for stage by stage,
        when the pipeline does not start that way, the image is small, it would
        fail (so errors name the image, not a band), or its border mode reaches
        beyond a band (wrap, or a band smaller than the padding it reflects).
        """
        conv, *rest = self.stages
        acts: list[ActivationStage] = []
        while rest and isinstance(rest[0], ActivationStage):
            acts.append(rest[0])
            rest = rest[1:]
        if not (isinstance(conv, ConvStage) and rest and isinstance(rest[0], PoolStage)):
            return None
        pool, after = rest[0], rest[1:]
        height = x.shape[0]
        try:  # whatever would fail fails stage by stage, naming the whole image
            strategies = [conv.strategy_for(x, kernel) for kernel in conv.members()]
            out_h, out_w = conv.out_shape(x.shape[:2])
        except ValueError:
            return None
        (ph, pw), (psy, _) = pool.size, pool.stride or pool.size
        if ph > out_h or pw > out_w:
            return None
        pooled = (out_h - ph) // psy + 1
        per_band = max(1, BAND_ROWS // psy)
        if conv.pad_mode == "wrap" or pooled <= per_band:
            return None
        bands = [(i0, min(pooled, i0 + per_band)) for i0 in range(0, pooled, per_band)]
        for i0, i1 in bands:
            for kernel in conv.members():
                (a, b), (top, bottom, _, _) = conv.band_of(kernel, height, i0 * psy,
                                                           (i1 - 1) * psy + ph)
                if b - a <= max(top, bottom) + 1:
                    return None
        result: NDArray[Any] | None = None
        for i0, i1 in bands:
            y = conv.run(x, rows=(i0 * psy, (i1 - 1) * psy + ph), strategies=strategies)
            for act in acts:
                y = act.run(y, in_place=True)
            part = pool.run(y)
            if result is None:
                result = np.empty((pooled, *part.shape[1:]), part.dtype)
            result[i0:i1] = part
        assert result is not None
        return result, tuple(after)

    def run_mapped(
        self, x: NDArray[Any], how: str, *, scale: float, out_max: int,
        allocate: Allocate = np.empty,
    ) -> tuple[NDArray[Any], float]:
        """Run and map to integers in ``[0, out_max]``: the result and the clipped fraction.

        ``allocate(shape, dtype)`` makes the output array for a per-value mapping
        (:func:`imgconv.imageio.output_array` lays it out for the encoder).

        One plain kernel, optionally followed by an activation, with a per-value
        mapping (clip, abs, offset) runs fused: integer input is read, filtered
        and mapped tile by tile straight into the integer output, so memory is
        the input, the output and a few tiles. Anything else runs stage by stage
        in floating point and is mapped at the end; both give the same values.
        """
        conv, *rest = self.stages
        fusable = (
            isinstance(conv, ConvStage)
            and not hasattr(conv.kernel, "kernels")
            and all(isinstance(s, ActivationStage) for s in rest)
            and how in ("clip", "abs", "offset")
        )
        if not fusable:
            return self._run_mapped_by_channel(x, how, scale=scale, out_max=out_max,
                                               allocate=allocate)
        assert isinstance(conv, ConvStage)
        from imgconv.core.conv import correlate_into, output_shape

        kernel = conv.kernel
        padding = conv._padding_for(kernel)
        try:
            shape = output_shape(x.shape, kernel.weights.shape, padding=padding,
                                 stride=conv.stride, dilation=conv.dilation)
        except ValueError as exc:
            raise ImageError(f"kernel {kernel.name}: {exc}") from None
        out = allocate(shape, _out_dtype(out_max))
        clipped: list[int] = []  # appended from the core's threads (list.append is atomic)
        activations = [s.kind for s in rest if isinstance(s, ActivationStage)]

        def post(tile: NDArray[Any]) -> None:
            if kernel.bias:
                tile += kernel.bias
            for kind in activations:
                if kind == "relu":
                    np.maximum(tile, 0, out=tile)
                elif kind == "abs":
                    np.abs(tile, out=tile)
            mapped = map_tile if tile.dtype.kind == "f" else map_int16_tile
            clipped.append(mapped(tile, how, scale=scale, out_max=out_max))

        # exact int16 sums (never -32768) map without floats when nothing adds a fraction
        post.takes_int16 = (  # type: ignore[attr-defined]
            not kernel.bias and int16_mappable(how, scale, out_max))

        try:
            correlate_into(x, kernel.weights, out, padding=padding, pad_mode=conv.pad_mode,
                           cval=conv.cval, stride=conv.stride, dilation=conv.dilation,
                           flip=conv.mode == "convolve", post=post)
        except ValueError as exc:
            raise ImageError(f"kernel {kernel.name}: {exc}") from None
        return out, sum(clipped) / max(out.size, 1)

    def _run_mapped_by_channel(
        self, x: NDArray[Any], how: str, *, scale: float, out_max: int, allocate: Allocate
    ) -> tuple[NDArray[Any], float]:
        """Run stage by stage, one colour channel at a time where channels are independent.

        Without a multi-channel filter every stage treats channels separately, so
        a bank's float responses exist for one channel at a time (a third of the
        memory for RGB). ``normalize`` needs every channel's range first, so it
        maps the whole result at once.
        """
        multichannel = any(k.matrix.ndim == 3 for s in self.conv_stages for k in s.members())
        if x.ndim == 2 or multichannel or how == "normalize":
            return map_output(self.run(x), how, scale=scale, out_max=out_max)
        out: NDArray[Any] | None = None
        clipped = 0
        for c in range(x.shape[2]):
            values = self.run(x[:, :, c])
            if values.dtype != np.float64:
                values = values.astype(np.float32, copy=False)
            clipped += map_tile(values, how, scale=scale, out_max=out_max)
            if out is None:
                out = allocate((*values.shape, x.shape[2]), _out_dtype(out_max))
            out[:, :, c] = values
        assert out is not None
        return out, clipped / max(out.size, 1)

    def output_mapping(self) -> str:
        """The mapping to use: ``output``, or for ``auto`` the last kernel's preference."""
        if self.output != "auto":
            return self.output
        for stage in reversed(self.conv_stages):
            return str(getattr(stage.kernel, "output", None) or "clip")
        return "clip"

    def clipping_remedies(self, how: str) -> tuple[str, ...]:
        """The output maps that would keep what ``how`` clips, given the result's sign.

        Empty where clipping is expected: every kernel keeps brightness (its
        weights sum to 1, as sharpen's do), so what goes past black or white is
        the overshoot that such a filter makes. A result that cannot be negative
        (a gradient magnitude, after ReLU) is helped by ``normalize`` alone: abs
        changes nothing and offset clips more. A signed result (a derivative)
        shows its strength with ``abs`` and its sign with ``offset``.
        """
        if how == "normalize":
            return ()
        if all(abs(float(np.sum(k.weights)) + k.bias - 1) < 1e-6
               for s in self.conv_stages for k in s.members()):
            return ()
        lo, _ = self.value_range(0.0, 1.0)
        if lo >= 0 or how != "clip":
            return ("normalize",)
        return ("abs", "offset", "normalize")

    def all_weights_nonnegative(self) -> bool:
        return all(
            float(np.min(k.weights)) >= 0 for s in self.conv_stages for k in s.members()
        )

    def value_range(self, lo: float, hi: float) -> tuple[float, float]:
        """Bounds on the result for input values in [lo, hi]."""
        for stage in self.stages:
            lo, hi = stage.value_range(lo, hi)
        return lo, hi

    def shapes(self, shape: tuple[int, int]) -> list[tuple[int, int]]:
        """The (H, W) after each stage, by the output-size formula."""
        out = []
        for stage in self.stages:
            if not isinstance(stage, ActivationStage):
                shape = stage.out_shape(shape)
            out.append(shape)
        return out

    def size_problem(self, shape: tuple[int, int], max_pixels: int) -> str | None:
        """Why running on an image of ``shape`` would make an array too large, or None.

        Each stage's result may have at most ``max_pixels`` pixels and each
        convolution's padded input at most four times that (the padding is
        materialized), worked out by the output-size formula before anything
        is computed.
        """
        for n, stage in enumerate(self.stages, 1):
            if isinstance(stage, ActivationStage):
                continue
            if isinstance(stage, ConvStage):
                for kernel in stage.members():
                    top, bottom, left, right = stage.pads(kernel)
                    padded = (shape[0] + top + bottom, shape[1] + left + right)
                    if padded[0] * padded[1] > 4 * max_pixels:
                        return (f"stage {n} ({stage.spec}) would pad the image to "
                                f"{_pixels(padded)}, more than 4 x the limit of {max_pixels:,}")
            shape = stage.out_shape(shape)
            if shape[0] * shape[1] > max_pixels and min(shape) > 0:
                what = f"stage {n}" + (f" ({stage.spec})" if isinstance(stage, ConvStage) else "")
                return f"{what} would make {_pixels(shape)}, more than the limit of {max_pixels:,}"
        return None

    def plan(self, shape: tuple[int, int], full: float = 255.0) -> list[str]:
        """The --dry-run report for an input of ``shape`` with values in ``0 .. full``.

        For each stage: what it applies, its padding, stride and dilation, the
        output size worked out by the formula, and bounds on the values; then
        whether the output mapping will clip.
        """
        lo, hi = 0.0, full
        lines = [f"input {shape[0]}x{shape[1]} (rows x columns), values {_span(lo, hi)}"]
        for n, stage in enumerate(self.stages, 1):
            lo, hi = stage.value_range(lo, hi)
            if isinstance(stage, ConvStage):
                k = stage.members()[0]
                kh, kw = k.matrix.shape[:2]
                top, bottom, left, right = stage.pads(k)
                (sy, sx), (dy, dx) = stage.stride, stage.dilation
                ey, ex = dy * (kh - 1) + 1, dx * (kw - 1) + 1
                oh, ow = stage.out_shape(shape)
                kind = (f"bank: {stage.kernel.combine} of {len(stage.members())} kernels"
                        if hasattr(stage.kernel, "kernels") else "kernel")
                border = f" ({stage.pad_mode})" if top + bottom + left + right else ""
                lines += [
                    f"stage {n}: {stage.mode} {stage.spec} ({kind}, {kh}x{kw}, "
                    f"{stage.parameter_count()} parameters)",
                    f"    padding {stage.padding} = top {top}, bottom {bottom}, left {left}, "
                    f"right {right}{border}; stride {sy}x{sx}; dilation {dy}x{dx}",
                    f"    rows    floor(({shape[0]}+{top}+{bottom}-{ey})/{sy})+1 = {oh}",
                    f"    columns floor(({shape[1]}+{left}+{right}-{ex})/{sx})+1 = {ow}",
                ]
                shape = (oh, ow)
            elif isinstance(stage, ActivationStage):
                lines.append(f"stage {n}: activation {stage.kind}")
            else:
                (kh, kw), (sy, sx) = stage.size, stage.stride or stage.size
                oh, ow = stage.out_shape(shape)
                lines += [
                    f"stage {n}: {stage.op} pool {kh}x{kw}, stride {sy}x{sx}, no padding",
                    f"    rows    floor(({shape[0]}-{kh})/{sy})+1 = {oh}",
                    f"    columns floor(({shape[1]}-{kw})/{sx})+1 = {ow}",
                ]
                shape = (oh, ow)
            lines.append(f"    values {_span(lo, hi)}")
        how = self.output_mapping()
        out = {
            "clip": (lo, hi),
            "abs": (0.0 if lo < 0 < hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi))),
            "offset": (lo + (full + 1) / 2, hi + (full + 1) / 2),
            "normalize": (0.0, full),
        }[how]
        fits = out[0] >= 0 and out[1] <= full
        lines.append(f"output: --output-map {how}: {_span(*out)} "
                     + (f"fits 0 .. {full:g}" if fits else f"will clip to 0 .. {full:g}"))
        return lines

    def to_dict(self) -> dict[str, Any]:
        """A plain description (for manifests and --dry-run), as a pipeline YAML would say it."""
        stages: list[dict[str, Any]] = []
        for s in self.stages:
            if isinstance(s, ConvStage):
                padding = list(s.padding) if isinstance(s.padding, tuple) else s.padding
                stages.append({
                    "kernel": s.spec, "mode": s.mode, "padding": padding,
                    "pad_mode": s.pad_mode, "cval": s.cval, "stride": list(s.stride),
                    "dilation": list(s.dilation),
                })
            elif isinstance(s, ActivationStage):
                stages.append({"activation": s.kind})
            else:
                stages.append({"pool": {"op": s.op, "size": list(s.size),
                                        "stride": list(s.stride or s.size)}})
        return {"stages": stages, "output": self.output}

    @classmethod
    def from_options(
        cls,
        kernels: Sequence[str],
        *,
        mode: str = "correlate",
        padding: object = "same",
        pad_mode: str = "reflect",
        cval: float = 0.0,
        stride: object = 1,
        dilation: object = 1,
        activation: str = "none",
        pool: str | None = None,
        pool_size: object = None,
        pool_stride: object = None,
        output: str = "auto",
    ) -> Pipeline:
        """Build from the command line's options: each kernel a stage, then activation, pool."""
        if not kernels:
            raise UsageError("give at least one kernel with -k/--kernel, or --pipeline FILE")
        stages: list[Stage] = [
            conv_stage(spec, mode=mode, padding=padding, pad_mode=pad_mode, cval=cval,
                       stride=stride, dilation=dilation)
            for spec in kernels
        ]
        _choice(activation, ACTIVATIONS, "--activation")
        if activation != "none":
            stages.append(ActivationStage(activation))
        if pool is None:
            if pool_size is not None or pool_stride is not None:
                raise UsageError("--pool-size and --pool-stride need --pool max|avg")
        else:
            stages.append(pool_stage(pool, pool_size, pool_stride))
        return cls(tuple(stages), _choice(output, OUTPUT_MAPPINGS, "--output-map"))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        """Build from a pipeline YAML file (see README.md, "Pipeline files")."""
        import yaml

        from imgconv.kernels.parse import Refused, read_text, safe_loader

        try:
            text = read_text(path)
        except Refused as exc:
            raise UsageError(f"{path}: the pipeline file {exc}") from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the pipeline file ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not a pipeline YAML file (not UTF-8 text)") from None
        try:
            doc = yaml.load(text, Loader=safe_loader())  # a safe loader
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" line {where.line + 1}:" if where is not None else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise UsageError(f"{path}:{line} not valid YAML ({problem})") from None
        except Refused as exc:
            raise UsageError(f"{path}:{f' line {exc.line}:' if exc.line else ''} {exc}") from None
        try:
            return cls.from_dict(doc)
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, doc: object) -> Pipeline:
        if not isinstance(doc, dict) or "stages" not in doc:
            raise UsageError("a pipeline is a mapping with a 'stages' list")
        _check_keys(doc, ("stages", "output"), "pipeline")
        items = doc["stages"]
        if not isinstance(items, list) or not items:
            raise UsageError("'stages' must be a non-empty list")
        stages: list[Stage] = []
        for n, item in enumerate(items, 1):
            where = f"stage {n}"
            if not isinstance(item, dict):
                raise UsageError(f"{where}: must be a mapping with kernel, activation or pool")
            kinds = [k for k in ("kernel", "activation", "pool") if k in item]
            if len(kinds) != 1:
                raise UsageError(f"{where}: must have exactly one of kernel, activation, pool")
            try:
                if kinds[0] == "kernel":
                    _check_keys(item, ("kernel", *CONV_KEYS), where)
                    options = {k.replace("-", "_"): v for k, v in item.items() if k != "kernel"}
                    stages.append(_file_conv_stage(item["kernel"], n, options))
                elif kinds[0] == "activation":
                    _check_keys(item, ("activation",), where)
                    stages.append(ActivationStage(
                        _choice(item["activation"], ACTIVATIONS, "activation")))
                else:
                    _check_keys(item, ("pool",), where)
                    spec = item["pool"]
                    if not isinstance(spec, dict):
                        raise UsageError("pool must be a mapping {op, size, stride}")
                    _check_keys(spec, ("op", "size", "stride"), "pool")
                    stages.append(pool_stage(spec.get("op"), spec.get("size"),
                                             spec.get("stride"), POOL_KEYS))
            except UsageError as exc:
                raise UsageError(f"{where}: {exc}") from None
        output = doc.get("output", "auto")
        return cls(tuple(stages), _choice(output, OUTPUT_MAPPINGS, "output"))


def _pixels(shape: tuple[int, int]) -> str:
    """``3x4 = 12 pixels``; past a trillion pixels, the count alone, rounded."""
    count = shape[0] * shape[1]
    if count < 10**12:
        return f"{shape[0]}x{shape[1]} = {count:,} pixels"
    return f"about {float(count):.3g} pixels"


def _file_conv_stage(kernel: object, n: int, options: dict[str, Any]) -> ConvStage:
    """A pipeline file's ``kernel:``: a spec (text, a number, a list of rows) or a mapping
    as a bank member takes (``{matrix: ..., scale: ...}``), named ``stage-N`` by default."""
    if isinstance(kernel, dict):
        from imgconv.kernels.library import from_mapping

        built = from_mapping(kernel, f"stage-{n}")
        return conv_stage(built.name, kernel=built, **options)
    if isinstance(kernel, bool) or not isinstance(kernel, (str, int, float, list)):
        from imgconv.kernels.text import short

        raise UsageError(f"kernel must be a kernel spec or a mapping, got {short(kernel)}")
    return conv_stage(str(kernel), **options)


def _span(lo: float, hi: float) -> str:
    return f"{lo:.6g} .. {hi:.6g}"


CONV_KEYS = ("mode", "padding", "pad_mode", "pad-mode", "cval", "stride", "dilation")


def _check_keys(mapping: dict[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise UsageError(
                f"unknown key {key!r} in {where}{_suggest(str(key), allowed)}; "
                f"allowed: {', '.join(allowed)}"
            )


def conv_stage(
    spec: str,
    *,
    mode: str = "correlate",
    padding: object = "same",
    pad_mode: str = "reflect",
    cval: object = 0.0,
    stride: object = 1,
    dilation: object = 1,
    kernel: Any = None,
) -> ConvStage:
    """Resolve a kernel spec (unless ``kernel`` is given, already resolved) and check every
    option; raises UsageError/KernelError."""
    from imgconv.kernels import resolve

    _choice(mode, CONV_MODES, "--mode")
    pad = parse_padding(padding)
    try:
        canonical, fill = normalize_pad_mode(pad_mode, cval)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc).replace("pad_mode", "--pad-mode").replace("cval", "--cval")
                         ) from None
    if abs(fill) > FLOAT32_MAX:  # the stages work in float32: it would become infinity
        raise UsageError(f"--cval must be within float32's range (about ±3.4e38), got {fill:g}")
    kernel = resolve(spec) if kernel is None else kernel
    return ConvStage(spec, mode, pad, canonical, fill, parse_pair(stride, "--stride"),
                     parse_pair(dilation, "--dilation"), kernel)


#: How errors name a pooling stage's settings: as the command line's flags, or
#: as a pipeline file's keys
POOL_FLAGS = {"op": "--pool", "size": "--pool-size", "stride": "--pool-stride"}
POOL_KEYS = {"op": "pool op", "size": "pool size", "stride": "pool stride"}


def pool_stage(op: object, size: object, stride: object,
               names: dict[str, str] = POOL_FLAGS) -> PoolStage:
    _choice(op, POOL_OPS, names["op"])
    if size is None:
        raise UsageError(f"{names['op']} needs {names['size']} N or N,M")
    return PoolStage(
        str(op), parse_pair(size, names["size"]),
        None if stride is None else parse_pair(stride, names["stride"]),
    )


def map_tile(v: NDArray[Any], how: str, *, scale: float, out_max: int) -> int:
    """Map float values in place to whole numbers in ``[0, out_max]`` (``clip``/``abs``/``offset``).

    Returns how many values fell outside the range and were clipped. Works on a
    whole image or on one tile of it: the mapping of a value does not depend on
    the others (``normalize`` does, so it is not here).
    """
    if scale != 1.0:
        v *= scale
    if how == "abs":
        np.abs(v, out=v)
    elif how == "offset":
        v += (out_max + 1) / 2
    np.rint(v, out=v)
    clipped = int(np.count_nonzero(v < 0)) + int(np.count_nonzero(v > out_max))
    np.clip(v, 0, out_max, out=v)
    return clipped


def int16_mappable(how: str, scale: float, out_max: int) -> bool:
    """Whether :func:`map_int16_tile` can map int16 tiles this way."""
    return scale == 1.0 and how in ("clip", "abs") and out_max <= np.iinfo(np.int16).max


def map_int16_tile(v: NDArray[np.int16], how: str, *, scale: float, out_max: int) -> int:
    """:func:`map_tile` of an int16 tile of whole numbers, for ``clip`` and ``abs`` at scale 1.

    The same values and count, with no float pass: a negative int16 read as
    uint16 is 32768 or more, so one comparison counts what falls outside
    ``[0, out_max]``.

    >>> t = np.array([-300, -1, 0, 255, 256], np.int16)
    >>> map_int16_tile(t, "clip", scale=1.0, out_max=255), t.tolist()
    (3, [0, 0, 0, 255, 255])
    """
    if not int16_mappable(how, scale, out_max):
        raise ValueError(f"int16 tiles map only by clip or abs at scale 1, got {how} at {scale}")
    if how == "abs":
        np.abs(v, out=v)
    clipped = int(np.count_nonzero(v.view(np.uint16) > out_max))
    np.clip(v, 0, out_max, out=v)
    return clipped


def map_output(
    values: NDArray[Any], how: str, *, scale: float, out_max: int
) -> tuple[NDArray[Any], float]:
    """Map float results (in input units) to integers in ``[0, out_max]``.

    ``scale`` converts input units to output units (``out_max / in_max``).
    Returns the mapped array (uint8 or uint16) and the fraction of values that
    fell outside the range and were clipped.

    >>> a, lost = map_output(np.array([-20.0, 100.4, 300.0]), "clip", scale=1.0, out_max=255)
    >>> a.tolist(), round(lost, 3)
    ([0, 100, 255], 0.667)
    >>> map_output(np.array([-20.0, 20.0]), "offset", scale=1.0, out_max=255)[0].tolist()
    [108, 148]
    """
    _choice(how, OUTPUT_MAPPINGS[1:], "--output-map")
    v = np.multiply(values, scale, dtype=np.float64 if values.dtype == np.float64 else np.float32)
    finite = np.isfinite(v)
    bad = v.size - int(np.count_nonzero(finite))
    if bad:
        # NaN has no place in the range: it becomes 0 (+inf and -inf clip to the ends),
        # and normalize stretches the finite values only
        import warnings

        warnings.warn(f"{bad:,} non-finite values (NaN/inf) in the result; NaN written as 0",
                      RuntimeWarning, stacklevel=2)
        np.nan_to_num(v, copy=False, nan=0.0, posinf=np.inf, neginf=-np.inf)
    if how == "normalize":
        lo, hi = (float(v[finite].min()), float(v[finite].max())) if bad < v.size else (0.0, 0.0)
        if hi > lo:
            v -= lo
            v *= out_max / (hi - lo)
        else:
            v[...] = 0
        if bad:
            v[v == np.inf] = out_max
            v[v == -np.inf] = 0
        how = "clip"
    clipped = map_tile(v, how, scale=1.0, out_max=out_max)
    return v.astype(_out_dtype(out_max)), clipped / max(v.size, 1)


def _out_dtype(out_max: int) -> type[np.unsignedinteger[Any]]:
    return np.uint8 if out_max <= 255 else np.uint16
