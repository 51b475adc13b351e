"""Facts about a kernel for ``imgconv show``: sum, rank, separable factors, parameters.

One tolerance decides every "is this zero?" here: ``rtol(a) = max(a.shape) · eps``
(float64 eps), relative to the size of what is tested. That is numpy's own rule
for :func:`numpy.linalg.matrix_rank` (singular values ``<= s_max · rtol`` count as
zero); the same ``rtol`` times ``max |x|`` decides zero entries and whole numbers
in the factors, and times ``sum |w|`` a zero sum. Scaling a kernel by any power
of two therefore never changes its rank, factors (up to the scale) or zero sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.kernels.model import Kernel, KernelBank


def separable_factors(
    weights: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """``(column, row)`` with ``outer(column, row) == weights`` for a rank-1 2-D kernel.

    Integer factors are preferred (Sobel: ``[1 2 1]`` and ``[-1 0 1]``); failing
    that, when the weights have a non-zero sum, both factors get the same sum
    (a Gaussian splits into two equal 1-D Gaussians).

    >>> col, row = separable_factors(np.array([[-1., 0, 1], [-2, 0, 2], [-1, 0, 1]]))
    >>> col.tolist(), row.tolist()
    ([1.0, 2.0, 1.0], [-1.0, 0.0, 1.0])
    >>> [v.tolist() for v in separable_factors(np.full((2, 2), 0.25))]
    [[0.5, 0.5], [0.5, 0.5]]
    >>> separable_factors(np.eye(3)) is None
    True
    """
    if weights.ndim != 2 or _rank(weights) != 1:
        return None
    tol = rtol(weights)
    i = int(np.argmax(np.abs(weights).sum(axis=1)))
    row = weights[i]
    j = int(np.argmax(np.abs(row)))
    col = weights[:, j] / row[j]
    nonzero = col[np.abs(col) > tol * float(np.abs(col).max())]
    k = float(np.min(np.abs(nonzero)))
    if nonzero[0] < 0:
        k = -k
    col, row = col / k, row * k
    total = float(weights.sum())
    if not (_integral(col, tol) and _integral(row, tol)) and not _is_zero_sum(weights):
        c = col.sum() / np.sqrt(abs(total))
        col, row = col / c, row * c
    return col, row


def rtol(a: NDArray[np.float64]) -> float:
    """The relative tolerance for ``a``: ``max(a.shape) · eps`` (numpy's matrix_rank rule)."""
    return float(max(a.shape) * np.finfo(np.float64).eps)


def _integral(a: NDArray[np.float64], tol: float) -> bool:
    return bool(np.all(np.abs(a - np.round(a)) <= tol * max(1.0, float(np.abs(a).max()))))


def _is_zero_sum(w: NDArray[np.float64]) -> bool:
    return abs(float(w.sum())) <= rtol(w) * float(np.abs(w).sum())


def _rank(matrix: NDArray[np.float64]) -> int:
    s = np.linalg.svd(matrix, compute_uv=False)
    return int(np.count_nonzero(s > s[0] * rtol(matrix))) if s.size and s[0] > 0 else 0


def describe(item: Kernel | KernelBank) -> dict[str, Any]:
    """Everything ``imgconv show`` prints as JSON, as JSON-ready values.

    Matrices of a multi-channel filter ``(kh, kw, C)`` are given channel first,
    one ``kh × kw`` list of lists per channel.

    >>> from imgconv.kernels import resolve
    >>> d = describe(resolve("gaussian-blur"))
    >>> d["shape"], d["sum"], d["rank"], d["separable"]["column"], d["parameters"]
    ([3, 3], 1.0, 1, [0.25, 0.5, 0.25], 9)
    """
    if isinstance(item, KernelBank):
        members = [describe(k) for k in item.kernels]
        return {
            "name": item.name,
            "kind": "bank",
            "source": item.source,
            "description": item.description,
            "tags": list(item.tags),
            "shape": list(item.shape),
            "combine": item.combine,
            "output": item.output,
            "parameters": sum(m["parameters"] for m in members),
            "weights": [m["weights"] for m in members],
            "kernels": members,
        }
    weights = item.weights
    if weights.ndim == 2:
        rank: int | list[int] = _rank(weights)
        factors = separable_factors(weights) if rank == 1 else None  # (one SVD, not two)
    else:
        rank = [_rank(weights[:, :, c]) for c in range(weights.shape[2])]
        factors = None
    return {
        "name": item.name,
        "kind": "kernel",
        "source": item.source,
        "description": item.description,
        "tags": list(item.tags),
        "shape": list(item.shape),
        "matrix": _lists(item.matrix),
        "scale": item.scale,
        "weights": _lists(weights),
        "sum": 0.0 if _is_zero_sum(weights) else float(weights.sum()),
        "bias": item.bias,
        "anchor": list(item.center),
        "rank": rank,
        "separable": (
            None if factors is None
            else {"column": _lists(factors[0]), "row": _lists(factors[1])}
        ),
        "parameters": int(weights.size) + (1 if item.bias else 0),
        "output": item.output,
    }


def _lists(a: NDArray[np.float64]) -> Any:
    if a.ndim == 3:
        return [_lists(a[:, :, c]) for c in range(a.shape[2])]
    # -0.0 reads as a different value in JSON (+ 0.0 makes it 0.0); tiny weights are kept.
    return (a + 0.0).tolist()
