"""Border handling: how an image is extended beyond its edges.

The modes and their meanings are scipy.ndimage's, so that a result can be
checked against ``scipy.ndimage.correlate`` in every mode::

    reflect   d c b a | a b c d | d c b a
    mirror      d c b | a b c d | c b a
    nearest   a a a a | a b c d | d d d d
    wrap      a b c d | a b c d | a b c d
    constant  k k k k | a b c d | k k k k

Padding may be wider than the image (a 31x31 kernel on a 3x2 image): every
mode is defined as an index map from any integer position to a source pixel,
so the extension simply keeps repeating.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

PAD_MODES = ("reflect", "mirror", "nearest", "wrap", "constant")
PAD_MODE_ALIASES = {
    "zero": "constant",
    "edge": "nearest",
    "symmetric": "reflect",
    # scipy.ndimage's synonyms for filters
    "grid-mirror": "reflect",
    "grid-wrap": "wrap",
    "grid-constant": "constant",
}


def normalize_pad_mode(pad_mode: object, cval: object) -> tuple[str, float]:
    """Return the canonical ``(mode, cval)`` for a mode name or alias.

    >>> normalize_pad_mode("zero", 5.0)
    ('constant', 0.0)
    >>> normalize_pad_mode("edge", 0)
    ('nearest', 0.0)
    """
    if not isinstance(pad_mode, str):
        raise TypeError(
            f"pad_mode must be a string, one of {', '.join(PAD_MODES)}; "
            f"got {type(pad_mode).__name__}"
        )
    if isinstance(cval, bool) or not isinstance(cval, (int, float, np.integer, np.floating)):
        raise TypeError(f"cval must be a real number, got {cval!r}")
    cval = float(cval)
    if not np.isfinite(cval):
        raise ValueError(f"cval must be a finite number, got {cval}")
    if pad_mode == "zero":
        return "constant", 0.0
    mode = PAD_MODE_ALIASES.get(pad_mode, pad_mode)
    if mode not in PAD_MODES:
        aliases = ", ".join(sorted(PAD_MODE_ALIASES))
        raise ValueError(
            f"pad_mode must be one of {', '.join(PAD_MODES)} (aliases: {aliases}); "
            f"got {pad_mode!r}"
        )
    return mode, cval


def source_indices(n: int, before: int, after: int, mode: str) -> NDArray[np.intp]:
    """Indices into an axis of length ``n`` for each of ``before + n + after`` padded places.

    Not defined for ``constant``, whose padded places have no source pixel.

    >>> source_indices(4, 3, 3, "reflect").tolist()
    [2, 1, 0, 0, 1, 2, 3, 3, 2, 1]
    >>> source_indices(4, 3, 3, "mirror").tolist()
    [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    if mode == "constant":
        raise ValueError(f"no index map for pad_mode {mode!r}")
    return map_positions(np.arange(-before, n + after, dtype=np.intp), n, mode)


def map_positions(i: NDArray[np.intp], n: int, mode: str) -> NDArray[np.intp]:
    """The source pixel of each position ``i`` (any integers) on an axis of length ``n``.

    ``constant`` (or any place with no source pixel) gives -1 outside ``[0, n)``.

    >>> map_positions(np.arange(-2, 6), 4, "wrap").tolist()
    [2, 3, 0, 1, 2, 3, 0, 1]
    >>> map_positions(np.arange(-2, 6), 4, "constant").tolist()
    [-1, -1, 0, 1, 2, 3, -1, -1]
    """
    if mode == "constant":
        return np.where((i >= 0) & (i < n), i, -1)
    if mode == "nearest":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return np.mod(i, n)
    if mode == "reflect":
        # period 2n: a b c d d c b a | a b c d ...
        i = np.mod(i, 2 * n)
        return np.where(i < n, i, 2 * n - 1 - i)
    if mode == "mirror":
        if n == 1:
            return np.zeros_like(i)
        # period 2n - 2: a b c d c b | a b c d ...
        i = np.mod(i, 2 * n - 2)
        return np.where(i < n, i, 2 * n - 2 - i)
    raise ValueError(f"no index map for pad_mode {mode!r}")


class Mapped(NamedTuple):
    """Padded rows of a plane as the image itself and two index maps: no padded copy.

    What :func:`imgconv.core.jit.run` takes in place of a padded tile. Padded
    row ``p0 + i`` is image row ``rows[p0 + i]`` and padded column ``q`` is
    image column ``cols[q]``; ``-1`` in either (``constant`` only) reads
    ``fill``, a row of the constant. Output columns ``[interior[0], interior[1])``
    read only image columns, at ``q - left``; the others are listed in
    ``border``. Built by :meth:`imgconv.core.tiles.Padder.mapped`.
    """

    plane: NDArray[Any]
    rows: NDArray[np.intp]
    cols: NDArray[np.intp]
    fill: NDArray[Any]
    left: int
    interior: tuple[int, int]
    border: NDArray[np.intp]
    p0: int
