"""Obviously-correct references, written independently of the package.

Every function here loops over output pixels and kernel taps with plain Python
integers, following the definitions in README.md, so that a shared bug between
the core and its reference is unlikely.
"""

from __future__ import annotations

import numpy as np


def extend_index(i: int, n: int, mode: str) -> int | None:
    """The source index for position ``i`` of an axis of length ``n`` (None: the fill value)."""
    if 0 <= i < n:
        return i
    if mode == "constant":
        return None
    if mode == "nearest":
        return 0 if i < 0 else n - 1
    if mode == "wrap":
        while i < 0:
            i += n
        while i >= n:
            i -= n
        return i
    if mode == "reflect":  # d c b a | a b c d | d c b a
        while not 0 <= i < n:
            i = -i - 1 if i < 0 else 2 * n - 1 - i
        return i
    if mode == "mirror":  # d c b | a b c d | c b a
        if n == 1:
            return 0
        while not 0 <= i < n:
            i = -i if i < 0 else 2 * n - 2 - i
        return i
    raise ValueError(mode)


def correlate_loop(image, kernel, pads, stride=(1, 1), dilation=(1, 1), mode="constant", cval=0.0):
    """Correlate a 2-D image with a 2-D kernel, one output pixel at a time."""
    image = np.asarray(image, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    top, bottom, left, right = pads
    (sy, sx), (dy, dx) = stride, dilation
    h, w = image.shape
    kh, kw = kernel.shape
    oh = (h + top + bottom - (dy * (kh - 1) + 1)) // sy + 1
    ow = (w + left + right - (dx * (kw - 1) + 1)) // sx + 1
    out = np.zeros((oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            total = 0.0
            for i in range(kh):
                for j in range(kw):
                    y = extend_index(oy * sy + i * dy - top, h, mode)
                    x = extend_index(ox * sx + j * dx - left, w, mode)
                    value = cval if y is None or x is None else image[y, x]
                    total += kernel[i, j] * value
            out[oy, ox] = total
    return out


def pool_loop(image, size, stride, op, padding=(0, 0), dilation=(1, 1), ceil_mode=False,
              count_include_pad=True):
    """Max or average pooling of a 2-D image, one window at a time, as PyTorch defines it.

    Window ``o`` starts at ``o * s - p``; max reads the taps inside the image
    (padding is -inf), avg sums them and divides by the window's places inside
    the padded image (``count_include_pad``) or inside the image.
    """
    image = np.asarray(image, dtype=np.float64)
    (kh, kw), (sy, sx), (py, px), (dy, dx) = size, stride, padding, dilation
    h, w = image.shape

    def count(n, k, s, p, d):
        span = n + 2 * p - (d * (k - 1) + 1)
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= n + p:
            out -= 1
        return out

    oh, ow = count(h, kh, sy, py, dy), count(w, kw, sx, px, dx)
    out = np.zeros((oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            y0, x0 = oy * sy - py, ox * sx - px
            taps = [(y0 + i * dy, x0 + j * dx) for i in range(kh) for j in range(kw)]
            inside = [image[y, x] for y, x in taps if 0 <= y < h and 0 <= x < w]
            if op == "max":
                out[oy, ox] = max(inside, default=-np.inf)  # all taps in the padding
                continue
            if count_include_pad:
                rows = min(y0 + kh, h + py) - y0
                cols = min(x0 + kw, w + px) - x0
            else:
                rows = min(y0 + kh, h) - max(y0, 0)
                cols = min(x0 + kw, w) - max(x0, 0)
            out[oy, ox] = sum(inside) / (rows * cols)
    return out


def distinct_kernel(kh: int, kw: int, channels: int | None = None) -> np.ndarray:
    """A kernel whose taps are all distinct powers of two (with alternating signs).

    A flip, a transposition or an off-by-one shift changes the result.
    """
    n = kh * kw * (channels or 1)
    taps = 2.0 ** (np.arange(n) % 40 - 20) * np.where(np.arange(n) % 2, -1.0, 1.0)
    shape = (kh, kw) if channels is None else (kh, kw, channels)
    return taps.reshape(shape)
