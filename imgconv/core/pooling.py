"""The detector and pooling stages of a CNN layer: activation, then max or average pooling
(padding, dilation and ceil_mode as PyTorch's ``max_pool2d`` and ``avg_pool2d``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from imgconv.core.conv import IntPair, as_image, working_dtype
from imgconv.core.geometry import normalize_pair

POOL_OPS = ("max", "avg")
ACTIVATIONS = ("none", "relu", "abs")


def pool_size_out(n: int, k: int, stride: int, padding: int = 0, dilation: int = 1,
                  ceil_mode: bool = False) -> int:
    """The number of pooling windows along an axis of ``n``, as PyTorch counts them.

    With ``e = dilation*(k-1) + 1``: ``floor((n + 2*padding - e) / stride) + 1``
    (``ceil`` with ``ceil_mode``, where a last window that would start in the
    right padding is dropped). Zero or less means no window fits.

    >>> pool_size_out(5, 2, 2), pool_size_out(5, 2, 2, ceil_mode=True)
    (2, 3)
    >>> pool_size_out(6, 3, 2, padding=1, dilation=2)
    2
    """
    span = n + 2 * padding - (dilation * (k - 1) + 1)
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return max(out, 0)


def pool(
    image: ArrayLike, size: IntPair, *, stride: IntPair | None = None, op: str = "max",
    padding: IntPair = 0, dilation: IntPair = 1, ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> NDArray[Any]:
    """Max or average pooling over windows, per channel, as PyTorch's ``max_pool2d`` and
    ``avg_pool2d`` do it.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
    size : int or (rows, columns)
        The window.
    stride : int or (rows, columns), optional
        The step between windows (default: ``size``, so they tile the image).
    op : {"max", "avg"}
    padding : int or (rows, columns)
        Implicit padding on both sides, at most half the window: ``-inf`` for max
        (it never wins), zeros for avg.
    dilation : int or (rows, columns)
        The spacing of a max window's taps (avg takes 1 only, as in PyTorch).
    ceil_mode : bool
        Round the window count up, so that the last, partial window is kept
        (unless it would start in the right padding).
    count_include_pad : bool
        For avg, whether padded places count in the divisor (PyTorch's default).
        Places past the padding, reached by ``ceil_mode`` windows, never count.

    Returns
    -------
    ndarray
        ``(H', W')`` or ``(H', W', C)``, float64 for float64 input, float32 otherwise;
        per axis ``floor((n + 2p - (d(k-1) + 1)) / s) + 1`` places (:func:`pool_size_out`).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> pool(x, 2)
    array([[ 5.,  7.],
           [13., 15.]])
    >>> pool(x, 2, stride=1, op="avg").shape
    (3, 3)
    >>> pool(x, 3, stride=2, ceil_mode=True)
    array([[10., 11.],
           [14., 15.]])
    >>> pool(np.ones((2, 2)), 2, padding=1, op="avg", count_include_pad=False).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """
    if op not in POOL_OPS:
        raise ValueError(f"op must be one of {', '.join(POOL_OPS)}, got {op!r}")
    img = as_image(image)
    kh, kw = normalize_pair(size, "pool size")
    sy, sx = normalize_pair(size if stride is None else stride, "pool stride")
    py, px = normalize_pair(padding, "pool padding", minimum=0)
    dy, dx = normalize_pair(dilation, "pool dilation")
    h, w = img.shape[:2]
    oh, ow = check_pool((h, w), (kh, kw), (py, px), (dy, dx), (sy, sx), op, ceil_mode)
    dtype = working_dtype(img.dtype)
    x = np.asarray(img, dtype=dtype)
    # every window's taps inside the array: the padding, and past it what ceil_mode reaches
    need_h, need_w = (oh - 1) * sy + dy * (kh - 1) + 1, (ow - 1) * sx + dx * (kw - 1) + 1
    after_h, after_w = max(0, need_h - h - py), max(0, need_w - w - px)
    if py or px or after_h or after_w:
        fill = -np.inf if op == "max" else 0.0
        widths = [(py, after_h), (px, after_w)] + [(0, 0)] * (x.ndim - 2)
        x = np.pad(x, widths, mode="constant", constant_values=fill)

    out = reduce_windows(x, (kh, kw), (sy, sx), (dy, dx), (oh, ow), op)
    if op == "avg":
        divide_by_counts(out, (h, w), (kh, kw), (sy, sx), (py, px), count_include_pad)
    return out


def check_pool(shape: tuple[int, int], size: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], stride: tuple[int, int], op: str,
               ceil_mode: bool) -> tuple[int, int]:
    """The pooled (rows, columns) of an image of ``shape``; ValueError for windows PyTorch
    refuses (avg with dilation, padding over half the window) or none that fit."""
    (h, w), (kh, kw), (py, px), (dy, dx), (sy, sx) = shape, size, padding, dilation, stride
    if op == "avg" and (dy, dx) != (1, 1):
        raise ValueError(f"pool dilation applies to max pooling only, got {(dy, dx)} for avg")
    if py > kh // 2 or px > kw // 2:
        raise ValueError(
            f"pool padding must be at most half the pool size ({kh // 2}, {kw // 2}), "
            f"got ({py}, {px})")
    oh = pool_size_out(h, kh, sy, py, dy, ceil_mode)
    ow = pool_size_out(w, kw, sx, px, dx, ceil_mode)
    if oh < 1 or ow < 1:
        extra = "".join(f" {word} {pair}" for word, pair, plain in (
            ("with dilation", (dy, dx), (1, 1)), ("and padding", (py, px), (0, 0)))
            if pair != plain)
        raise ValueError(
            f"pool size ({kh}, {kw}){extra} is larger than the image ({h}, {w})")
    return oh, ow


def reduce_windows(x: NDArray[Any], size: tuple[int, int], stride: tuple[int, int],
                   dilation: tuple[int, int], count: tuple[int, int], op: str) -> NDArray[Any]:
    """The max (``op="max"``) or the sum (``"avg"``) of the first ``count`` windows of an
    array already padded: window ``(i, j)`` starts at ``(i * sy, j * sx)``."""
    (kh, kw), (sy, sx), (dy, dx), (oh, ow) = size, stride, dilation, count

    def window(i: int, j: int) -> NDArray[Any]:
        return x[i : i + sy * (oh - 1) + 1 : sy, j : j + sx * (ow - 1) + 1 : sx]

    out: NDArray[Any] = window(0, 0).copy()
    for i in range(kh):
        for j in range(kw):
            if i or j:
                if op == "max":
                    np.maximum(out, window(i * dy, j * dx), out=out)
                else:
                    out += window(i, j)
    return out


def divide_by_counts(sums: NDArray[Any], shape: tuple[int, int], size: tuple[int, int],
                     stride: tuple[int, int], padding: tuple[int, int], include_pad: bool,
                     first: tuple[int, int] = (0, 0)) -> None:
    """Divide avg windows' sums in place by how many of their places count (PyTorch's
    divisor); ``first`` is the (row, column) of the first window in the whole result."""
    rows = _counts(shape[0], size[0], stride[0], padding[0], sums.shape[0], include_pad, first[0])
    cols = _counts(shape[1], size[1], stride[1], padding[1], sums.shape[1], include_pad, first[1])
    divisor = np.multiply.outer(rows, cols).astype(sums.dtype)
    sums /= divisor if sums.ndim == 2 else divisor[:, :, None]


def _counts(n: int, k: int, s: int, p: int, count: int, include_pad: bool,
            first: int = 0) -> NDArray[Any]:
    """How many places of each avg window along an axis count: inside the image, or with
    ``include_pad`` inside the padded image (as PyTorch's avg_pool2d divides)."""
    start = (first + np.arange(count)) * s - p
    lo, hi = (-p, n + p) if include_pad else (0, n)
    counts: NDArray[Any] = np.minimum(start + k, hi) - np.maximum(start, lo)
    return counts


def activate(image: ArrayLike, kind: str = "relu", *, out: NDArray[Any] | None = None
             ) -> NDArray[Any]:
    """The detector stage: ``relu`` (max(x, 0)), ``abs`` (|x|) or ``none``.

    ``out`` receives the result (it may be the image itself, in the working
    dtype); by default a new array does.

    >>> activate([[-2.0, 3.0]], "relu")
    array([[0., 3.]])
    >>> x = np.array([-1.5, 2.0]); activate(x, "abs", out=x) is x, x
    (True, array([1.5, 2. ]))
    """
    if kind not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {kind!r}")
    x = np.asarray(image)
    x = x.astype(working_dtype(x.dtype), copy=False)
    result: NDArray[Any]
    if kind == "relu":
        result = np.maximum(x, 0, out=out)
    elif kind == "abs":
        result = np.abs(x, out=out)
    elif out is None:
        result = x.copy()
    else:
        np.copyto(out, x)
        result = out
    return result
