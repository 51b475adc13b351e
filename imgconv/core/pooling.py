"""The detector and pooling stages of a CNN layer: activation, then max or average pooling."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from imgconv.core.conv import IntPair, as_image, working_dtype
from imgconv.core.geometry import normalize_pair

POOL_OPS = ("max", "avg")
ACTIVATIONS = ("none", "relu", "abs")


def pool(
    image: ArrayLike, size: IntPair, *, stride: IntPair | None = None, op: str = "max"
) -> NDArray[Any]:
    """Max or average pooling over windows, per channel, without padding.

    Windows start at 0 and step by ``stride`` (default: ``size``, so they tile
    the image); the output has ``floor((n - k) / s) + 1`` places per axis.
    The dtype is float64 for float64 input, float32 otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> pool(x, 2)
    array([[ 5.,  7.],
           [13., 15.]])
    >>> pool(x, 2, stride=1, op="avg").shape
    (3, 3)
    """
    if op not in POOL_OPS:
        raise ValueError(f"op must be one of {', '.join(POOL_OPS)}, got {op!r}")
    img = as_image(image)
    kh, kw = normalize_pair(size, "pool size")
    sy, sx = normalize_pair(size if stride is None else stride, "pool stride")
    h, w = img.shape[:2]
    if kh > h or kw > w:
        raise ValueError(f"pool size ({kh}, {kw}) is larger than the image ({h}, {w})")
    oh, ow = (h - kh) // sy + 1, (w - kw) // sx + 1
    x = np.asarray(img, dtype=working_dtype(img.dtype))

    def window(i: int, j: int) -> NDArray[Any]:
        return x[i : i + sy * (oh - 1) + 1 : sy, j : j + sx * (ow - 1) + 1 : sx]

    out: NDArray[Any] = window(0, 0).copy()
    for i in range(kh):
        for j in range(kw):
            if i or j:
                if op == "max":
                    np.maximum(out, window(i, j), out=out)
                else:
                    out += window(i, j)
    if op == "avg":
        out /= kh * kw
    return out


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
