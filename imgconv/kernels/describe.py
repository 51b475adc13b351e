"""Facts about a kernel for ``imgconv show``: sum, rank, separable factors, parameters."""

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
    i = int(np.argmax(np.abs(weights).sum(axis=1)))
    row = weights[i]
    j = int(np.argmax(np.abs(row)))
    col = weights[:, j] / row[j]
    nonzero = col[np.abs(col) > 1e-12]
    k = float(np.min(np.abs(nonzero)))
    if nonzero[0] < 0:
        k = -k
    col, row = col / k, row * k
    total = float(weights.sum())
    if not (_integral(col) and _integral(row)) and abs(total) > 1e-12:
        c = col.sum() / np.sqrt(abs(total))
        col, row = col / c, row * c
    return col, row


def _integral(a: NDArray[np.float64]) -> bool:
    return bool(np.allclose(a, np.round(a), rtol=0, atol=1e-9))


def _rank(matrix: NDArray[np.float64]) -> int:
    return int(np.linalg.matrix_rank(matrix))


def describe(item: Kernel | KernelBank) -> dict[str, Any]:
    """Everything ``imgconv show --json`` prints, as JSON-ready values.

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
        factors = separable_factors(weights)
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
        "sum": _clean(float(weights.sum())),
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


def _clean(x: float) -> float:
    # Rounding noise (1e-17 for a zero-sum kernel) would read as a real value.
    return 0.0 if abs(x) < 1e-12 else x


def _lists(a: NDArray[np.float64]) -> Any:
    if a.ndim == 3:
        return [_lists(a[:, :, c]) for c in range(a.shape[2])]
    return [[_clean(float(v)) for v in row] for row in a] if a.ndim == 2 else [
        _clean(float(v)) for v in a
    ]
