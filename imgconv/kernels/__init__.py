"""The kernel library: named, parametric, inline and YAML kernels, and kernel banks.

:func:`resolve` turns any kernel spec into a :class:`Kernel` (a matrix with a
scale, bias, anchor and preferred output mapping) or a :class:`KernelBank`
(several same-shape kernels whose responses :func:`combine` merges)::

    >>> from imgconv.kernels import resolve, combine
    >>> resolve("sobel-x").weights.tolist()
    [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
    >>> resolve("gaussian:sigma=1").shape
    (7, 7)
    >>> resolve("0 1 0; 1 -4 1; 0 1 0").source
    'inline'

Weights are in correlation form, what :func:`imgconv.correlate` takes.
"""

from __future__ import annotations

from imgconv.kernels.describe import describe, separable_factors
from imgconv.kernels.families import FAMILIES
from imgconv.kernels.library import (
    CatalogEntry,
    builtin_dir,
    catalog,
    inline,
    resolve,
    search_path,
)
from imgconv.kernels.model import (
    COMBINES,
    OUTPUT_MAPS,
    Kernel,
    KernelBank,
    combine,
    rotate_matrix,
)
from imgconv.kernels.parse import dump
from imgconv.kernels.weights import from_array, load_weights, read_bias

__all__ = [
    "COMBINES",
    "FAMILIES",
    "OUTPUT_MAPS",
    "CatalogEntry",
    "Kernel",
    "KernelBank",
    "builtin_dir",
    "catalog",
    "combine",
    "describe",
    "dump",
    "from_array",
    "inline",
    "load_weights",
    "read_bias",
    "resolve",
    "rotate_matrix",
    "search_path",
    "separable_factors",
]
