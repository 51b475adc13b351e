"""Output geometry: padding amounts, stride, dilation and the output-size formula.

With ``e = d*(k-1) + 1`` the dilated extent of a kernel of size ``k``::

    out = floor((n + p_before + p_after - e) / s) + 1        (as PyTorch's conv2d)

``"valid"`` pads nothing, ``"full"`` pads ``e - 1`` on each side and ``"same"``
pads ``d*a`` before and ``d*(k-1-a)`` after, with the anchor ``a = k // 2``
(scipy.ndimage's centre, also for even sizes), so that the output has
``ceil(n / s)`` places and equals the stride-1 result subsampled by ``s``.
"""

from __future__ import annotations

import functools
import reprlib
from dataclasses import dataclass

import numpy as np

PADDING_NAMES = ("same", "valid", "full")

Pads = tuple[int, int, int, int]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def normalize_pair(value: object, name: str, *, minimum: int = 1) -> tuple[int, int]:
    """Turn an int or a pair of ints into a pair, checking each is ``>= minimum``.

    >>> normalize_pair(2, "stride")
    (2, 2)
    >>> normalize_pair((1, 3), "dilation")
    (1, 3)
    """
    if _is_int(value):
        pair = (int(value), int(value))  # type: ignore[call-overload]
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(_is_int(v) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(
            f"{name} must be an int or a pair of ints (y, x), got {reprlib.repr(value)}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {reprlib.repr(value)}")
    return pair


def extent(k: int, d: int) -> int:
    """The span of a kernel of size ``k`` dilated by ``d``: ``d*(k-1) + 1``."""
    return d * (k - 1) + 1


def output_size(n: int, k: int, before: int, after: int, stride: int, dilation: int) -> int:
    """``floor((n + before + after - e) / stride) + 1``; zero or less means no output.

    >>> output_size(10, 3, 1, 1, 1, 1)   # same
    10
    >>> output_size(10, 3, 0, 0, 2, 1)   # valid, stride 2
    4
    >>> output_size(7, 3, 2, 2, 3, 2)
    3
    """
    return (n + before + after - extent(k, dilation)) // stride + 1


def same_pads(k: int, d: int, anchor: int | None = None) -> tuple[int, int]:
    """Padding ``(before, after)`` that keeps the size at stride 1, centred on ``anchor``."""
    a = k // 2 if anchor is None else anchor
    return d * a, d * (k - 1 - a)


def resolve_padding(
    padding: object,
    kernel_shape: tuple[int, int],
    dilation: tuple[int, int],
) -> Pads:
    """Turn a ``padding`` argument into ``(top, bottom, left, right)`` amounts.

    ``"same"`` is resolved for correlation; true convolution mirrors it (see
    :func:`imgconv.core.conv.convolve`).

    >>> resolve_padding("same", (3, 4), (1, 1))
    (1, 1, 2, 1)
    >>> resolve_padding("full", (3, 3), (2, 1))
    (4, 4, 2, 2)
    >>> resolve_padding((1, 2), (3, 3), (1, 1))
    (1, 1, 2, 2)
    """
    (kh, kw), (dy, dx) = kernel_shape, dilation
    if isinstance(padding, str):
        if padding == "same":
            return (*same_pads(kh, dy), *same_pads(kw, dx))
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "full":
            py, px = extent(kh, dy) - 1, extent(kw, dx) - 1
            return (py, py, px, px)
        raise ValueError(
            f"padding must be one of {', '.join(PADDING_NAMES)}, an int, a pair (py, px) "
            f"or (top, bottom, left, right); got {padding!r}"
        )
    if _is_int(padding):
        pads: tuple[int, ...] = (int(padding),) * 4  # type: ignore[call-overload]
    elif isinstance(padding, (tuple, list)) and all(_is_int(p) for p in padding):
        if len(padding) == 2:
            pads = (int(padding[0]),) * 2 + (int(padding[1]),) * 2
        elif len(padding) == 4:
            pads = tuple(int(p) for p in padding)
        else:
            raise ValueError(
                f"padding must be an int, a pair (py, px) or four ints (top, bottom, left, right); "
                f"got {len(padding)} values {padding!r}"
            )
    else:
        raise TypeError(
            f"padding must be one of {', '.join(PADDING_NAMES)}, an int, a pair (py, px) "
            f"or (top, bottom, left, right); got {padding!r}"
        )
    if min(pads) < 0:
        raise ValueError(f"padding amounts must be >= 0, got {padding!r}")
    return pads[0], pads[1], pads[2], pads[3]


@dataclass(frozen=True)
class Geometry:
    """Everything needed to place a kernel over an image: sizes, padding, stride, dilation."""

    in_shape: tuple[int, int]
    kernel_shape: tuple[int, int]
    pads: Pads
    stride: tuple[int, int]
    dilation: tuple[int, int]

    @functools.cached_property
    def extent(self) -> tuple[int, int]:
        """The dilated kernel's span ``(ey, ex)``."""
        return (
            extent(self.kernel_shape[0], self.dilation[0]),
            extent(self.kernel_shape[1], self.dilation[1]),
        )

    @functools.cached_property
    def out_shape(self) -> tuple[int, int]:
        """``(H', W')`` by the output-size formula (may be <= 0: see :meth:`check`).

        Computed once per geometry (it is frozen): the strategies ask often.
        """
        top, bottom, left, right = self.pads
        return (
            output_size(
                self.in_shape[0], self.kernel_shape[0], top, bottom,
                self.stride[0], self.dilation[0],
            ),
            output_size(
                self.in_shape[1], self.kernel_shape[1], left, right,
                self.stride[1], self.dilation[1],
            ),
        )

    def check(self) -> None:
        """Raise ``ValueError`` when the output would be empty."""
        oh, ow = self.out_shape
        if oh < 1 or ow < 1:
            top, bottom, left, right = self.pads
            raise ValueError(
                f"output would be empty: the dilated kernel extent {self.extent} is larger than "
                f"the image {self.in_shape} plus padding (top={top}, bottom={bottom}, "
                f"left={left}, right={right})"
            )
