"""Correlation and true convolution of images with kernels and multi-channel filters."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from imgconv.core.geometry import Geometry, normalize_pair, resolve_padding
from imgconv.core.padding import normalize_pad_mode
from imgconv.core.strategies import STRATEGIES, choose_strategy

Padding = str | int | tuple[int, int] | tuple[int, int, int, int]
IntPair = int | tuple[int, int]


def working_dtype(dtype: np.dtype[Any]) -> type[np.floating[Any]]:
    """float64 for float64 (and wider) input, float32 for everything else."""
    if dtype.kind == "f" and dtype.itemsize >= 8:
        return np.float64
    return np.float32


def as_image(image: ArrayLike, name: str = "image") -> NDArray[Any]:
    """Check that ``image`` is a real 2-D (H, W) or 3-D (H, W, C) array and return it."""
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2-D (H, W) or 3-D (H, W, C), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    return arr


def as_kernel(kernel: ArrayLike) -> NDArray[np.float64]:
    """Check that ``kernel`` is a finite, non-empty 2-D or 3-D array of numbers."""
    try:
        arr = np.asarray(kernel, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"kernel must be an array of real numbers: {exc}") from None
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"kernel must be 2-D (kh, kw) or 3-D (kh, kw, C), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"kernel must not be empty, got shape {arr.shape}")
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        where = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"kernel must hold finite numbers, found {arr[where]} at index {where}"
        )
    return arr


def _correlate(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    padding: object,
    pad_mode: object,
    cval: object,
    stride: object,
    dilation: object,
    flip: bool,
    strategy: str | None = None,
) -> NDArray[Any]:
    """The one worker behind :func:`correlate` and :func:`convolve`."""
    img = as_image(image)
    weights = as_kernel(kernel)
    mode, fill = normalize_pad_mode(pad_mode, cval)
    strides = normalize_pair(stride, "stride")
    dilations = normalize_pair(dilation, "dilation")
    if weights.ndim == 3:
        channels = img.shape[2] if img.ndim == 3 else 1
        if img.ndim != 3 or channels != weights.shape[2]:
            raise ValueError(
                f"a multi-channel filter of shape {weights.shape} needs an image with "
                f"{weights.shape[2]} channels, got image shape {img.shape}"
            )
    kshape = (weights.shape[0], weights.shape[1])
    pads = resolve_padding(padding, kshape, dilations)
    if flip:
        weights = weights[::-1, ::-1]
        if padding == "same":
            # true convolution mirrors the anchor, as scipy.ndimage.convolve does
            pads = (pads[1], pads[0], pads[3], pads[2])
    geom = Geometry((img.shape[0], img.shape[1]), kshape, pads, strides, dilations)
    geom.check()

    dtype = working_dtype(img.dtype)
    weights = weights.astype(dtype)
    name = strategy or choose_strategy(weights, geom)
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    run = STRATEGIES[name]

    def plane(c: int | None) -> NDArray[Any]:
        return np.asarray(img if c is None else img[:, :, c], dtype=dtype)

    if img.ndim == 2:
        return run(plane(None), weights, geom, mode, fill)
    if weights.ndim == 3:
        out = run(plane(0), weights[:, :, 0], geom, mode, fill)
        for c in range(1, img.shape[2]):
            out += run(plane(c), weights[:, :, c], geom, mode, fill)
        return out
    return np.stack(
        [run(plane(c), weights, geom, mode, fill) for c in range(img.shape[2])], axis=-1
    )


def correlate(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    padding: Padding = "same",
    pad_mode: str = "reflect",
    cval: float = 0.0,
    stride: IntPair = 1,
    dilation: IntPair = 1,
) -> NDArray[Any]:
    """Cross-correlate an image with a kernel (what CNN code calls convolution).

    Parameters
    ----------
    image : array_like, shape (H, W) or (H, W, C)
        Any real dtype.
    kernel : array_like, shape (kh, kw) or (kh, kw, C)
        A 2-D kernel is applied to each channel independently. A 3-D kernel is a
        multi-channel filter: channel ``c`` is correlated with ``kernel[:, :, c]``
        and the responses are summed into one (H', W') map.
    padding : {"same", "valid", "full"}, int, (py, px) or (top, bottom, left, right)
        ``"same"`` centres the kernel on ``k // 2`` as scipy.ndimage does.
    pad_mode : {"reflect", "mirror", "nearest", "wrap", "constant"}
        scipy.ndimage's border modes; aliases ``zero``, ``edge``, ``symmetric``.
    cval : float
        The fill value for ``pad_mode="constant"``.
    stride, dilation : int or (y, x)
        Each ``>= 1``.

    Returns
    -------
    ndarray
        float64 for float64 input, float32 otherwise, of shape
        ``floor((n + p_before + p_after - e) / s) + 1`` per axis, ``e = d*(k-1) + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> correlate(x, [[0, 0, 1]], padding="valid")
    array([[ 2.,  3.],
           [ 6.,  7.],
           [10., 11.],
           [14., 15.]])
    >>> correlate(x, np.ones((2, 2)), stride=2).shape
    (2, 2)
    """
    return _correlate(
        image, kernel, padding=padding, pad_mode=pad_mode, cval=cval,
        stride=stride, dilation=dilation, flip=False,
    )


def convolve(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    padding: Padding = "same",
    pad_mode: str = "reflect",
    cval: float = 0.0,
    stride: IntPair = 1,
    dilation: IntPair = 1,
) -> NDArray[Any]:
    """True convolution: correlation with the kernel flipped in both axes.

    Takes the same arguments as :func:`correlate`. With ``padding="same"`` the
    anchor is mirrored too, so the result equals ``scipy.ndimage.convolve`` in
    every mode, even-sized kernels included; with explicit padding it is
    ``correlate(image, kernel[::-1, ::-1], ...)``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> convolve(x, [[0, 0, 1]], padding="valid")
    array([[ 0.,  1.],
           [ 4.,  5.],
           [ 8.,  9.],
           [12., 13.]])
    """
    return _correlate(
        image, kernel, padding=padding, pad_mode=pad_mode, cval=cval,
        stride=stride, dilation=dilation, flip=True,
    )
