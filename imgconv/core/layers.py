"""A CNN layer's forward pass: C_out filters, each C_in deep, plus a bias per filter."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from imgconv.core.conv import IntPair, Padding, as_image, correlate, working_dtype


def conv2d(
    image: ArrayLike,
    weights: ArrayLike,
    bias: ArrayLike | None = None,
    *,
    padding: Padding = "same",
    pad_mode: str = "reflect",
    cval: float = 0.0,
    stride: IntPair = 1,
    dilation: IntPair = 1,
) -> NDArray[Any]:
    """A convolution layer, as PyTorch's ``conv2d`` computes it (cross-correlation).

    Parameters
    ----------
    image : array_like, shape (H, W) or (H, W, C_in)
    weights : array_like
        ``(kH, kW)`` (one kernel, C_in 1), ``(kH, kW, C_in)`` (one filter) or PyTorch's
        ``(C_out, C_in, kH, kW)`` (a layer of C_out filters).
    bias : array_like, optional
        One value per output map (C_out), or one for all.
    padding, pad_mode, cval, stride, dilation
        As for :func:`imgconv.correlate`. PyTorch pads with zeros: ``pad_mode="constant"``.
        ``"same"`` centres a kernel on ``k // 2``; for an even kernel that puts the extra
        row and column before, where PyTorch's ``padding="same"`` puts them after.

    Returns
    -------
    ndarray, shape (H', W', C_out)
        float64 for float64 input, float32 otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(12.0).reshape(3, 4)
    >>> w = np.stack([np.ones((1, 3, 3)), -np.ones((1, 3, 3))])  # (2, 1, 3, 3)
    >>> y = conv2d(x, w, [0.5, 0.0], padding=0)
    >>> y.shape, y[0, :, 0].tolist(), y[0, :, 1].tolist()
    ((1, 2, 2), [45.5, 54.5], [-45.0, -54.0])
    """
    img = as_image(image)
    if img.ndim == 2:
        img = img[:, :, None]
    w = np.asarray(weights)
    if w.ndim == 2:
        w = w[None, None]
    elif w.ndim == 3:
        w = np.transpose(w, (2, 0, 1))[None]
    elif w.ndim != 4:
        raise ValueError("weights must be (kH, kW), (kH, kW, C_in) or (C_out, C_in, kH, kW), "
                         f"got shape {w.shape}")
    c_out, c_in = w.shape[:2]
    if c_in != img.shape[2]:
        raise ValueError(f"the weights take {c_in} input channels (C_in), but the image has "
                         f"{img.shape[2]}")
    b = np.zeros(c_out) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    if b.size == 1:
        b = np.repeat(b, c_out)
    if b.size != c_out:
        raise ValueError(f"bias must have one value per output map ({c_out}), got {b.size}")
    maps = []
    for o in range(c_out):
        m = correlate(img, np.transpose(w[o], (1, 2, 0)), padding=padding, pad_mode=pad_mode,
                      cval=cval, stride=stride, dilation=dilation)
        m += b[o].astype(m.dtype)
        maps.append(m)
    out: NDArray[Any] = np.stack(maps, axis=-1).astype(working_dtype(img.dtype), copy=False)
    return out
