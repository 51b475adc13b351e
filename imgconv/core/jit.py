"""The optional compiled path: a tap program run as one numba call per tile.

The numpy executor of :meth:`imgconv.core.taps.Program.run` makes one ufunc
call per :class:`~imgconv.core.taps.Step`, each over the whole tile. Between
those calls the thread holds the GIL, and on a 2-core machine two threads
handing it to each other cost more than a 3x3 kernel's arithmetic. Here the
same steps run in one compiled call that releases the GIL, row by row, so each
row of the accumulator stays in the L1 cache across all the steps.

The operations and their order are the numpy executor's exactly, in the same
dtype and without fast-math, so the two paths give the same bits; the tests
check that, and run every strategy against scipy with the path on and off.

numba is an optional extra (``pip install 'imgconv[jit]'``), imported only
when the path is first used. Whether it is used is, in order of precedence:
:func:`set_jit` (what ``imgconv apply --jit/--no-jit`` calls), the
environment variable ``IMGCONV_JIT`` (``1`` or ``0``), then off. It is off by
default because a process pays for it once: on the README's 2-core Xeon,
importing numba and loading the kernel from numba's disk cache take 0.4 s and
about 130 MB (1.6 s to compile it when the cache is empty), against 0.3 s for
a whole ``imgconv apply`` of a 12 MP JPEG without it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.core.taps import (
    ADD,
    ADD_SCRATCH,
    COPY,
    MUL,
    SCALE,
    SUB,
    SUB_SCRATCH,
    SUM,
    ZERO,
    Step,
)

ENV_VAR = "IMGCONV_JIT"

#: the dtypes the compiled kernel takes (an accumulator and its sources alike)
DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int16))

_requested: bool | None = None


class JitUnavailable(RuntimeError):
    """The compiled path was asked for but numba cannot be imported."""


def installed() -> bool:
    """Whether numba can be imported (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


def set_jit(on: bool | None) -> None:
    """Use the compiled path for every later call (``None``: back to ``IMGCONV_JIT``).

    Raises :class:`JitUnavailable` when ``on`` is true and numba is missing.
    """
    global _requested
    if on and not installed():
        raise JitUnavailable(
            "the compiled path needs numba, which is not installed: pip install 'imgconv[jit]'"
        )
    _requested = on


def enabled() -> bool:
    """Whether tap programs run compiled: :func:`set_jit`, else ``IMGCONV_JIT``, else off."""
    if _requested is not None:
        return _requested
    value = os.environ.get(ENV_VAR, "").strip()
    if value in ("", "0"):
        return False
    if value != "1":
        raise ValueError(f"{ENV_VAR} must be 0 or 1, got {value!r}")
    if not installed():
        raise JitUnavailable(
            f"{ENV_VAR}=1 needs numba, which is not installed: pip install 'imgconv[jit]'"
        )
    return True


def _tap(tap: tuple[int, int, int] | None) -> tuple[int, int, int]:
    return (0, 0, 0) if tap is None else tap


@functools.lru_cache(maxsize=256)
def _encoded(
    steps: tuple[Step, ...], dtype: np.dtype[Any]
) -> tuple[NDArray[np.int64], NDArray[Any]]:
    """The steps as the kernel reads them: ``(op, reg, *a, *b)`` rows and the weights."""
    ops = np.array([(s.op, s.reg, *_tap(s.a), *_tap(s.b)) for s in steps], dtype=np.int64)
    weights = np.array([s.weight for s in steps], dtype=dtype)
    return ops, weights


def _flat(a: NDArray[Any]) -> tuple[NDArray[Any], tuple[int, ...]] | None:
    """``a``'s memory as one contiguous 1-D view from its first element to its last.

    With the strides in elements; None when its last axis is not contiguous or
    a stride is negative. The kernel indexes that view itself, so numba
    knows each row is contiguous and LLVM vectorizes the loops over it.
    """
    item = a.itemsize
    if a.size == 0 or a.strides[-1] != item or any(st < 0 or st % item for st in a.strides):
        return None
    steps = tuple(st // item for st in a.strides)
    length = 1 + sum((n - 1) * st for n, st in zip(a.shape, steps, strict=True))
    flat = np.lib.stride_tricks.as_strided(a, shape=(length,), strides=(item,),
                                           writeable=a.flags.writeable)
    return flat, steps


def run(
    steps: tuple[Step, ...],
    sources: Sequence[NDArray[Any]] | NDArray[Any],
    stride: tuple[int, int],
    acc: NDArray[Any],
    scratch: NDArray[Any] | None,
) -> bool:
    """Run ``steps`` compiled, as :meth:`~imgconv.core.taps.Program.run` would; False if it can't.

    It can when the sources are one 3-D array, or a single 2-D one, in
    ``acc``'s dtype, which is one of :data:`DTYPES` (the strategies' tiles
    always are), every row is contiguous and the column stride is 1;
    otherwise the caller runs the numpy executor.
    """
    if isinstance(sources, np.ndarray) and sources.ndim == 3:
        stack = sources
    elif len(sources) == 1 and sources[0].ndim == 2:
        stack = sources[0][None]
    else:
        return False
    dtype = acc.dtype
    if (stride[1] != 1 or dtype not in DTYPES or stack.dtype != dtype
            or (scratch is not None and scratch.dtype != dtype)):
        return False
    if acc.size == 0:
        return True
    src, dst = _flat(stack), _flat(acc)
    tmp = dst if scratch is None else _flat(scratch)
    if src is None or dst is None or tmp is None:
        return False
    ops, weights = _encoded(steps, dtype)
    rows, cols = acc.shape
    _kernel()(src[0], src[1][0], src[1][1], ops, weights, stride[0],
              dst[0], dst[1][0], tmp[0], tmp[1][0], rows, cols)
    return True


@functools.cache
def _kernel() -> Any:
    """The compiled kernel, built (or loaded from numba's disk cache) on first use."""
    import numba
    from numba import types

    i64 = types.int64
    signatures = [
        # the sources are typed read-only, so that a read-only image can be read in place
        types.void(types.Array(t, 1, "C", readonly=True), i64, i64, i64[:, :], t[:], i64,
                   t[::1], i64, t[::1], i64, i64, i64)
        for t in (types.float32, types.float64, types.int16)
    ]
    return numba.njit(signatures, nogil=True, cache=True)(_rows)


def _rows(
    src: NDArray[Any],
    src_pitch: int,
    row_pitch: int,
    ops: NDArray[np.int64],
    weights: NDArray[Any],
    sy: int,
    acc: NDArray[Any],
    acc_pitch: int,
    scratch: NDArray[Any],
    scratch_pitch: int,
    rows: int,
    cols: int,
) -> None:  # pragma: no cover - runs compiled; the tests compare it with the numpy executor
    """Every step over one output row, then the next row (plain Python: numba compiles it).

    Arrays are flat (see :func:`_flat`): row ``r`` of the accumulator starts
    at ``r * acc_pitch``; a step's view ``a`` reads source ``a[0]``, row
    ``r * sy + a[1]``, from column ``a[2]``. Each operand is sliced to a
    contiguous row before the loop, so LLVM vectorizes the loops.
    """
    for r in range(rows):
        ta = acc[r * acc_pitch : r * acc_pitch + cols]
        ts = scratch[r * scratch_pitch : r * scratch_pitch + cols]
        for k in range(ops.shape[0]):
            op = ops[k, 0]
            w = weights[k]
            t = ta if ops[k, 1] == 0 else ts
            if op == ADD_SCRATCH:
                for c in range(cols):
                    ta[c] = ta[c] + ts[c]
            elif op == SUB_SCRATCH:
                for c in range(cols):
                    ta[c] = ta[c] - ts[c]
            elif op == MUL:
                for c in range(cols):
                    t[c] = t[c] * w
            elif op == ZERO:
                for c in range(cols):
                    t[c] = 0
            else:
                i = ops[k, 2] * src_pitch + (r * sy + ops[k, 3]) * row_pitch + ops[k, 4]
                a = src[i : i + cols]
                if op == ADD:
                    for c in range(cols):
                        t[c] = t[c] + a[c]
                elif op == SUB:
                    for c in range(cols):
                        t[c] = t[c] - a[c]
                elif op == COPY:
                    for c in range(cols):
                        t[c] = a[c]
                elif op == SCALE:
                    for c in range(cols):
                        t[c] = a[c] * w
                else:
                    j = ops[k, 5] * src_pitch + (r * sy + ops[k, 6]) * row_pitch + ops[k, 7]
                    b = src[j : j + cols]
                    if op == SUM:
                        for c in range(cols):
                            t[c] = a[c] + b[c]
                    else:  # DIFF
                        for c in range(cols):
                            t[c] = a[c] - b[c]
