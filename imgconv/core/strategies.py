"""How a 2-D correlation is computed: the strategy seam.

Every strategy takes one image plane, one kernel plane (already flipped for
true convolution), the geometry and the border mode, and returns the output
plane in the image's working dtype. The public API never names a strategy:
:func:`choose_strategy` picks one, and tests run every registered strategy
against scipy.ndimage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.core.geometry import Geometry
from imgconv.core.padding import pad

Strategy = Callable[[NDArray[Any], NDArray[Any], Geometry, str, float], NDArray[Any]]


def direct(
    plane: NDArray[Any], kernel: NDArray[Any], geom: Geometry, mode: str, cval: float
) -> NDArray[Any]:
    """Shift and accumulate: one strided view of the padded plane per non-zero tap.

    Memory is the padded plane, the output and one scratch plane, whatever the
    kernel size (no im2col copy). Stride is taken by the views, so only the
    outputs that are kept are computed.
    """
    padded = pad(plane, geom.pads, mode, cval)
    oh, ow = geom.out_shape
    (sy, sx), (dy, dx) = geom.stride, geom.dilation
    out = np.zeros((oh, ow), dtype=plane.dtype)
    scratch = np.empty_like(out)
    for (i, j), weight in np.ndenumerate(kernel):
        if weight == 0:
            continue
        y0, x0 = i * dy, j * dx
        view = padded[y0 : y0 + sy * (oh - 1) + 1 : sy, x0 : x0 + sx * (ow - 1) + 1 : sx]
        np.multiply(view, weight, out=scratch)
        out += scratch
    return out


STRATEGIES: dict[str, Strategy] = {"direct": direct}


def choose_strategy(kernel: NDArray[Any], geom: Geometry) -> str:
    """Pick the cheapest strategy for this kernel and geometry (one, for now)."""
    return "direct"
