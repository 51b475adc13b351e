"""Output maps: float results to the integers an image file holds (clip, abs, offset, normalize).

``clip``, ``abs`` and ``offset`` map each value by itself, so they also run
tile by tile (:func:`map_tile`, fused into the core's passes); ``normalize``
needs the whole result's range first.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.kernels.model import OUTPUT_MAPS
from imgconv.pipeline.layer import choice

#: A clipped fraction above this gets a note (with the maps that would keep it)
CLIP_WARNING_FRACTION = 0.05


def map_tile(v: NDArray[Any], how: str, *, scale: float, out_max: int) -> int:
    """Map float values in place to whole numbers in ``[0, out_max]`` (``clip``/``abs``/``offset``).

    Returns how many values fell outside the range and were clipped. Works on a
    whole image or on one tile of it: the mapping of a value does not depend on
    the others (``normalize`` does, so it is not here).
    """
    if scale != 1.0:
        v *= scale
    if how == "abs":
        np.abs(v, out=v)
    elif how == "offset":
        v += (out_max + 1) / 2
    np.rint(v, out=v)
    clipped = int(np.count_nonzero(v < 0)) + int(np.count_nonzero(v > out_max))
    np.clip(v, 0, out_max, out=v)
    return clipped


def int16_mappable(how: str, scale: float, out_max: int) -> bool:
    """Whether :func:`map_int16_tile` can map int16 tiles this way."""
    return scale == 1.0 and how in ("clip", "abs") and out_max <= np.iinfo(np.int16).max


def map_int16_tile(v: NDArray[np.int16], how: str, *, scale: float, out_max: int) -> int:
    """:func:`map_tile` of an int16 tile of whole numbers, for ``clip`` and ``abs`` at scale 1.

    The same values and count, with no float pass: a negative int16 read as
    uint16 is 32768 or more, so one comparison counts what falls outside
    ``[0, out_max]``.

    >>> t = np.array([-300, -1, 0, 255, 256], np.int16)
    >>> map_int16_tile(t, "clip", scale=1.0, out_max=255), t.tolist()
    (3, [0, 0, 0, 255, 255])
    """
    if not int16_mappable(how, scale, out_max):
        raise ValueError(f"int16 tiles map only by clip or abs at scale 1, got {how} at {scale}")
    if how == "abs":
        np.abs(v, out=v)
    clipped = int(np.count_nonzero(v.view(np.uint16) > out_max))
    np.clip(v, 0, out_max, out=v)
    return clipped


def map_output(
    values: NDArray[Any], how: str, *, scale: float, out_max: int
) -> tuple[NDArray[Any], float]:
    """Map float results (in input units) to integers in ``[0, out_max]``.

    ``scale`` converts input units to output units (``out_max / in_max``).
    Returns the mapped array (uint8 or uint16) and the fraction of values that
    fell outside the range and were clipped.

    >>> a, lost = map_output(np.array([-20.0, 100.4, 300.0]), "clip", scale=1.0, out_max=255)
    >>> a.tolist(), round(lost, 3)
    ([0, 100, 255], 0.667)
    >>> map_output(np.array([-20.0, 20.0]), "offset", scale=1.0, out_max=255)[0].tolist()
    [108, 148]
    """
    choice(how, OUTPUT_MAPS, "output_map")
    mapped, clipped, bad = map_values(values, how, scale=scale, out_max=out_max)
    if bad:
        import warnings

        warnings.warn(f"{bad:,} non-finite values (NaN/inf) in the result; NaN written as 0",
                      RuntimeWarning, stacklevel=2)
    return mapped, clipped / max(mapped.size, 1)


def map_values(values: NDArray[Any], how: str, *, scale: float, out_max: int,
               span: tuple[float, float] | None = None) -> tuple[NDArray[Any], int, int]:
    """:func:`map_output` of ``values``, or of a tile of the result: (mapped, clipped, non-finite).

    ``span`` is the (min, max) of the whole result's finite values times
    ``scale``, for ``normalize`` (:func:`finite_span`); None takes this array's.
    """
    v = np.multiply(values, scale, dtype=np.float64 if values.dtype == np.float64 else np.float32)
    finite = np.isfinite(v)
    bad = v.size - int(np.count_nonzero(finite))
    if bad:
        # NaN has no place in the range: it becomes 0 (+inf and -inf clip to the ends),
        # and normalize stretches the finite values only
        np.nan_to_num(v, copy=False, nan=0.0, posinf=np.inf, neginf=-np.inf)
    if how == "normalize":
        lo, hi = finite_span(v, finite) if span is None else span
        if hi > lo:
            v -= lo
            v *= out_max / (hi - lo)
        else:
            v[...] = 0
        if bad:
            v[v == np.inf] = out_max
            v[v == -np.inf] = 0
        how = "clip"
    clipped = map_tile(v, how, scale=1.0, out_max=out_max)
    return v.astype(out_dtype(out_max)), clipped, bad


def finite_span(v: NDArray[Any], finite: NDArray[Any] | None = None) -> tuple[float, float]:
    """The (min, max) of the finite values of ``v``; (0, 0) when there are none."""
    if finite is None:
        finite = np.isfinite(v)
    if not finite.any():
        return 0.0, 0.0
    if finite.all():
        return float(v.min()), float(v.max())
    return float(v[finite].min()), float(v[finite].max())


def out_dtype(out_max: int) -> type[np.unsignedinteger[Any]]:
    return np.uint8 if out_max <= 255 else np.uint16
