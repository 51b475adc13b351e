"""The stages a pipeline runs: convolution (a kernel or a bank), activation and pooling.

Each is a plain, checked value (:mod:`imgconv.pipeline.layer` makes them);
running one calls imgconv's core.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.core.geometry import Geometry, resolve_padding, same_pads
from imgconv.errors import ImageError
from imgconv.kernels.model import Kernel, KernelBank


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
    kernel: Kernel | KernelBank = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    @property
    def bank(self) -> KernelBank | None:
        """The bank this stage applies, or None for one kernel."""
        return self.kernel if isinstance(self.kernel, KernelBank) else None

    @property
    def stacks(self) -> bool:
        """Whether the stage gives one map per member (a ``stack`` bank, a layer)."""
        return self.bank is not None and self.bank.combine == "stack"

    @property
    def in_channels(self) -> int | None:
        """The channels a (kh, kw, C_in) filter needs (C_in), or None: a 2-D kernel takes
        any number, each channel on its own."""
        return self.members()[0].channels

    def out_channels(self, channels: int) -> int:
        """The channels of the result for an input of ``channels`` (1 for a 2-D image):
        C_out of a stack, 1 for a multi-channel filter, else the input's."""
        if self.stacks:
            return len(self.members())
        return 1 if self.in_channels is not None else channels

    def map_names(self) -> tuple[str, ...]:
        """The names of a stack's maps: its members' (a layer's are ``0 .. C_out-1``)."""
        return tuple(k.name for k in self.members()) if self.stacks else ()

    def members(self) -> tuple[Kernel, ...]:
        """The plain kernels this stage applies (one, or a bank's members)."""
        return self.kernel.kernels if isinstance(self.kernel, KernelBank) else (self.kernel,)

    def padding_for(self, kernel: Kernel) -> Any:
        """The padding the core is given for ``kernel``: a YAML anchor moves "same"."""
        if self.padding != "same" or kernel.anchor is None:
            return self.padding
        kh, kw = kernel.matrix.shape[:2]
        (ay, ax), (dy, dx) = kernel.anchor, self.dilation
        if self.mode == "convolve":
            # convolve() flips the kernel, which moves the anchor to k - 1 - a
            ay, ax = kh - 1 - ay, kw - 1 - ax
        return (*same_pads(kh, dy, ay), *same_pads(kw, dx, ax))

    def pads(self, kernel: Kernel) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding as the core will apply it."""
        kh, kw = kernel.matrix.shape[:2]
        padding = self.padding_for(kernel)
        pads = resolve_padding(padding, (kh, kw), self.dilation)
        if padding == "same" and self.mode == "convolve":
            pads = (pads[1], pads[0], pads[3], pads[2])
        return pads

    def apply_kernel(self, x: NDArray[Any], kernel: Kernel, rows: tuple[int, int] | None = None,
                     strategy: str | None = None) -> NDArray[Any]:
        """The response to one kernel; with ``rows = (r0, r1)``, only those output rows.

        Rows ``r0 .. r1 - 1`` of the whole response: the image rows they read,
        with the padding that falls inside them (:meth:`band_of`). ``strategy``
        (None: the core's choice for what it is given) is the one the whole
        image takes (:meth:`strategy_for`), so that a band computes the same.
        """
        from imgconv.core.conv import correlate_with

        if kernel.channels == 1 and x.ndim == 2:  # a 1-deep filter (C_in 1) on a gray image
            x = x[:, :, None]
        padding = self.padding_for(kernel)
        if rows is not None:
            (a, b), padding = self.band_of(kernel, x.shape[0], *rows)
            x = x[a:b]
        try:
            out = correlate_with(
                x, kernel.weights, padding=padding, pad_mode=self.pad_mode,
                cval=self.cval, stride=self.stride, dilation=self.dilation,
                flip=self.mode == "convolve", strategy=strategy,
            )
        except ValueError as exc:
            raise ImageError(f"kernel {kernel.name}: {exc}") from None
        if kernel.bias:
            out += kernel.bias
        return out

    def strategy_for(self, x: NDArray[Any], kernel: Kernel) -> str:
        """The core's strategy for ``kernel`` on the whole of ``x``; raises as it would."""
        from imgconv.core.conv import strategy_for

        return strategy_for(x, kernel.weights, padding=self.padding_for(kernel),
                            pad_mode=self.pad_mode, cval=self.cval, stride=self.stride,
                            dilation=self.dilation, flip=self.mode == "convolve")

    def band_of(self, kernel: Kernel, height: int, r0: int, r1: int
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
        A bank's responses are folded as they come (:meth:`fold`).
        """
        members = self.members()
        chosen = list(strategies) if strategies is not None else [None] * len(members)
        if self.bank is None:
            return self.apply_kernel(x, members[0], rows, chosen[0])
        x = self.bank_input(x)
        return self.fold(self.apply_kernel(x, kernel, rows, strategy)
                         for kernel, strategy in zip(members, chosen, strict=True))

    def bank_input(self, x: NDArray[Any]) -> NDArray[Any]:
        """What each member of a bank reads: the one channel of a one-channel image for a
        stack of 2-D kernels (one map each); raises for a colour image there."""
        if self.stacks and self.in_channels is None and x.ndim == 3:
            if x.shape[2] != 1:  # each map would be C maps: stacking them means nothing
                raise ImageError(
                    f"{self.spec}: a stack of 2-D kernels makes one map each from a one-channel "
                    f"image, got {x.shape[2]} channels; use `gray=True`")
            x = x[:, :, 0]
        return x

    def fold(self, responses: Iterable[NDArray[Any]]) -> NDArray[Any]:
        """A bank's members' responses (in order) folded into its result.

        Each is folded in as it comes (:class:`imgconv.kernels.model.Fold`), so
        two planes are alive rather than one per member.
        """
        from imgconv.kernels.model import Fold

        assert self.bank is not None
        fold = Fold(self.bank.combine, len(self.members()), owned=True)  # each is fresh
        for response in responses:
            fold.add(response)
        return fold.result()

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
        if self.bank is None:
            return ranges[0]
        los, his = [r[0] for r in ranges], [r[1] for r in ranges]
        how = self.bank.combine
        if how == "magnitude":
            return 0.0, math.sqrt(sum(max(a * a, b * b) for a, b in ranges))
        if how == "max":
            return max(los), max(his)
        if how == "min":
            return min(los), min(his)
        if how == "sum":
            return sum(los), sum(his)
        if how == "stack":
            return min(los), max(his)
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
    """Max or average pooling (stride defaults to the size), as PyTorch's max_pool2d and
    avg_pool2d: padding, dilation (max), ceil_mode and count_include_pad (avg)."""

    op: str
    size: tuple[int, int]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = True

    @property
    def plain(self) -> bool:
        """No padding, dilation or ceil_mode: windows lie inside the image, from its corner."""
        return self.padding == (0, 0) and self.dilation == (1, 1) and not self.ceil_mode

    def run(self, x: NDArray[Any]) -> NDArray[Any]:
        from imgconv.core.pooling import pool

        try:
            return pool(x, self.size, stride=self.stride, op=self.op, padding=self.padding,
                        dilation=self.dilation, ceil_mode=self.ceil_mode,
                        count_include_pad=self.count_include_pad)
        except ValueError as exc:
            raise ImageError(f"pooling: {exc}") from None

    def out_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        from imgconv.core.pooling import pool_size_out

        (kh, kw), (sy, sx) = self.size, self.stride or self.size
        (py, px), (dy, dx) = self.padding, self.dilation
        return (pool_size_out(shape[0], kh, sy, py, dy, self.ceil_mode),
                pool_size_out(shape[1], kw, sx, px, dx, self.ceil_mode))

    def value_range(self, lo: float, hi: float) -> tuple[float, float]:
        return lo, hi


Stage = ConvStage | ActivationStage | PoolStage
