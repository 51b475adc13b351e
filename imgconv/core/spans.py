"""Pitched rows as one 1-D span: how both executors see a 2-D buffer.

A tile whose rows are contiguous but spaced by a pitch (a window of a wider
image, say) is the 1-D stretch of memory from its first element to its last.
The compiled kernels index that stretch themselves; the numpy executor runs
a pass over it as one contiguous ufunc call, computing the few places
between rows too, which is more than twice as fast as the same pass over
the 2-D view (numpy 2.4, a 98x1998 float32 window of a 2000-wide image:
69 against 160 µs; docs/performance.md, "Every size").
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def flat(a: NDArray[Any], writeable: bool) -> tuple[NDArray[Any], tuple[int, ...]] | None:
    """``a``'s memory as one contiguous 1-D view from its first element to its last.

    With the strides in elements; None when its last axis is not contiguous or
    a stride is negative. A C-contiguous array is simply reshaped (a
    general strided view costs microseconds).
    """
    item = a.itemsize
    if a.flags.c_contiguous and a.size:
        view = a.reshape(-1)
        if not writeable:
            view.flags.writeable = False
        return view, tuple(st // item for st in a.strides)
    if a.size == 0 or a.strides[-1] != item or any(st < 0 or st % item for st in a.strides):
        return None
    steps = tuple(st // item for st in a.strides)
    length = 1 + sum((n - 1) * st for n, st in zip(a.shape, steps, strict=True))
    view = np.lib.stride_tricks.as_strided(a, shape=(length,), strides=(item,),
                                           writeable=writeable)
    return view, steps
