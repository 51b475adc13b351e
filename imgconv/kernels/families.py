"""Parametric kernel families: ``box:5``, ``box:3x5``, ``gaussian:sigma=2,size=9``,
``motion:length=9,angle=45``, ``log:sigma=1.4``.

A family turns parameters (``key=value`` pairs, or one positional value for the
first parameter) into a concrete :class:`~imgconv.kernels.model.Kernel`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.errors import KernelError
from imgconv.kernels.model import MAX_SIZE, Kernel, suggest
from imgconv.kernels.text import parse_number, short

__all__ = ["FAMILIES", "MAX_SIZE", "make", "parse_params"]

Params = dict[str, Any]
#: The narrowest Gaussian (and LoG): a sigma of 0.01 pixel is already the identity.
MIN_SIGMA = 0.01


@dataclass(frozen=True)
class Param:
    """One family parameter: its name, the rule it follows (for messages) and a default."""

    name: str
    rule: str
    default: Any = None
    check: Callable[[object, Params], Any] = lambda v, _: v

    def describe(self) -> str:
        return f"{self.name}={self.rule}"


@dataclass(frozen=True)
class Family:
    """A parametric family: its parameters and the function that builds the matrix."""

    name: str
    params: tuple[Param, ...]
    build: Callable[[Params], tuple[NDArray[np.float64], float]]
    description: str
    output: str
    tags: tuple[str, ...]

    def accepts(self) -> str:
        """``"gaussian accepts sigma=S (> 0, default 1), size=N (...)"``."""
        return f"{self.name} accepts " + ", ".join(p.describe() for p in self.params)


def _int(value: object, name: str, minimum: int = 1) -> int:
    number = parse_number(value, name)
    if number != int(number):
        raise KernelError(f"{name} must be a whole number, got {value}")
    if number < minimum:
        raise KernelError(f"{name} must be >= {minimum}, got {value}")
    if number > MAX_SIZE:
        raise KernelError(f"{name} must be <= {MAX_SIZE}, got {value}")
    return int(number)


def _odd_size(value: object, _: Params) -> int:
    size = _int(value, "size")
    if size % 2 == 0:
        raise KernelError(f"size must be odd (the kernel is centred on a pixel), got {size}")
    return size


def _sigma(value: object, _: Params) -> float:
    sigma = parse_number(value, "sigma")
    if sigma < MIN_SIGMA:  # narrower is the identity, and 1e-300 underflows
        raise KernelError(f"sigma must be >= {MIN_SIGMA}, got {value}")
    return sigma


def _box_size(value: object, _: Params) -> tuple[int, int]:
    text = str(value).strip()
    match = re.fullmatch(r"(\S+?)\s*[xX×]\s*(\S+)", text)
    if match:
        return _int(match[1], "height"), _int(match[2], "width")
    n = _int(text, "size")
    return n, n


def _default_size(sigma: float, size: int | None) -> int:
    if size is not None:
        return size
    if 3 * sigma > MAX_SIZE:  # (and math.ceil(inf) raises)
        raise KernelError(f"sigma={sigma:g} gives a kernel larger than the limit {MAX_SIZE}; "
                          f"give size=N or a sigma <= {MAX_SIZE // 6}")
    size = 2 * math.ceil(3 * sigma) + 1
    if size > MAX_SIZE:
        raise KernelError(
            f"sigma={sigma:g} needs a {size}×{size} kernel, larger than the limit {MAX_SIZE}"
        )
    return size


def _offsets(size: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r = np.arange(size, dtype=np.float64) - size // 2
    return r[:, None], r[None, :]


def _box(p: Params) -> tuple[NDArray[np.float64], float]:
    h, w = p["size"]
    return np.ones((h, w)), 1.0 / (h * w)


def _sampled_gaussian(p: Params) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(r², g)``: squared offsets from the centre and the Gaussian divided by its sum."""
    sigma = p["sigma"]
    y, x = _offsets(_default_size(sigma, p["size"]))
    r2 = x * x + y * y
    g = np.exp(-r2 / (2 * sigma * sigma))
    return r2, g / g.sum()


def _gaussian(p: Params) -> tuple[NDArray[np.float64], float]:
    return _sampled_gaussian(p)[1], 1.0


def _log(p: Params) -> tuple[NDArray[np.float64], float]:
    sigma = p["sigma"]
    r2, g = _sampled_gaussian(p)
    log = (r2 - 2 * sigma * sigma) / sigma**4 * g
    # Sampling truncates the tails; removing the mean keeps a flat image at zero.
    return log - log.mean(), 1.0


def _motion(p: Params) -> tuple[NDArray[np.float64], float]:
    """Exactly ``length`` taps of ``1/length`` on a line through the centre (a DDA).

    The taps are the points ``-(n-1)/2, ..., (n-1)/2`` one pixel apart along the
    major axis (x when the line is within 45° of horizontal, else y), each rounded
    to the nearest pixel (halves towards the bottom right). The angle is taken
    modulo 180°, so ``angle`` and ``angle + 180`` give the same kernel. The kernel
    is the smallest odd square holding every tap, centred on the centre pixel.
    """
    length, angle = p["length"], math.radians(p["angle"] % 180.0)
    dx, dy = math.cos(angle), math.sin(angle)
    steps = np.arange(length, dtype=np.float64) - (length - 1) / 2
    # Rounded so that 45° gives a slope of exactly 1 (tan(pi/4) is 0.9999999999999999).
    if abs(dy) <= abs(dx):
        x, y = steps, steps * round(dy / dx, 12)
    else:
        x, y = steps * round(dx / dy, 12), steps
    # Screen coordinates: rows grow downwards, so y up is a decreasing row.
    rows = np.floor(-y + 0.5).astype(int)
    cols = np.floor(x + 0.5).astype(int)
    half = int(max(np.abs(rows).max(), np.abs(cols).max()))
    matrix = np.zeros((2 * half + 1, 2 * half + 1))
    matrix[rows + half, cols + half] = 1.0
    return matrix, 1.0 / length


def _angle(value: object, _: Params) -> float:
    return parse_number(value, "angle")


def _length(value: object, _: Params) -> int:
    return _int(value, "length")


SIZE_RULE = "N (odd, >= 1; default 2·ceil(3·sigma)+1)"
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "box", (Param("size", "N or HxW (>= 1; default 3)", "3", _box_size),),
            _box, "mean of an N×N or H×W window", "clip", ("blur", "smooth"),
        ),
        Family(
            "gaussian",
            (Param("sigma", f"S (>= {MIN_SIGMA}; default 1)", 1.0, _sigma),
             Param("size", SIZE_RULE, None, _odd_size)),
            _gaussian, "Gaussian blur, exp(-(x²+y²)/2σ²) divided by its sum", "clip",
            ("blur", "smooth"),
        ),
        Family(
            "motion",
            (Param("length", "N (>= 1; default 9)", 9, _length),
             Param("angle", "DEG (anticlockwise from the x axis; default 0)", 0.0, _angle)),
            _motion, "motion blur: the mean along a line of N pixels", "clip", ("blur",),
        ),
        Family(
            "log",
            (Param("sigma", f"S (>= {MIN_SIGMA}; default 1)", 1.0, _sigma),
             Param("size", SIZE_RULE, None, _odd_size)),
            _log, "Laplacian of Gaussian (zero-sum; negative centre)", "abs",
            ("edge", "blob"),
        ),
    )
}


def parse_params(text: str) -> dict[str, str]:
    """Split ``"sigma=2,size=9"`` into a dict; a lone first value is keyed ``""``.

    >>> parse_params("sigma=2, size=9")
    {'sigma': '2', 'size': '9'}
    >>> parse_params("3x5")
    {'': '3x5'}
    """
    out: dict[str, str] = {}
    if not text.strip():
        return out
    for i, part in enumerate(p.strip() for p in text.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            if i == 0 and part:
                out[""] = part
                continue
            raise KernelError(f"expected key=value, got {short(part)}")
        key = key.strip()
        if not key:
            raise KernelError(f"{short(part)} has no parameter name before '='")
        if key in out:
            raise KernelError(f"parameter {short(key)} is given twice")
        out[key] = value.strip()
    return out


def make(family: str, params: str | Mapping[str, object] = "", *, name: str | None = None,
         source: str = "family") -> Kernel:
    """Build a kernel of ``family`` from ``params`` (text ``"sigma=2"`` or a mapping).

    Examples
    --------
    >>> make("box", "3x5").weights.shape
    (3, 5)
    >>> k = make("gaussian", "sigma=1")
    >>> k.name, k.shape, round(float(k.weights.sum()), 12)
    ('gaussian:sigma=1', (7, 7), 1.0)
    >>> make("gaussian", "sigam=2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    imgconv.errors.KernelError: bad parameters 'sigam=2' for gaussian: unknown parameter 'sigam' ...
    """
    fam = FAMILIES[family]
    text = params if isinstance(params, str) else ",".join(f"{k}={v}" for k, v in params.items())
    names = [p.name for p in fam.params]
    try:
        given: Mapping[str, object] = parse_params(text) if isinstance(params, str) else params
        if "" in given and not isinstance(params, str):
            raise KernelError("a parameter has no name")
        if "" in given:
            given = {names[0]: given[""], **{k: v for k, v in given.items() if k}}
        values: Params = {}
        for key in given:
            if key not in names:
                raise KernelError(f"unknown parameter {short(key)}{suggest(key, names)}")
        for p in fam.params:
            value = given.get(p.name, p.default)
            values[p.name] = None if value is None else p.check(value, values)
        # numpy warnings never leak: parameters that overflow are the user's error
        with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
            try:
                matrix, scale = fam.build(values)
            except (FloatingPointError, OverflowError):
                raise KernelError("the parameters are out of range (the weights overflow)"
                                  ) from None
    except KernelError as exc:
        shown = repr(text) if len(text) <= 60 else f"{text[:20]!r}…"
        raise KernelError(
            f"bad parameters {shown} for {family}: {exc}; {fam.accepts()}"
        ) from None
    canonical = ",".join(f"{k}={_fmt(v)}" for k, v in given.items())
    return Kernel(
        name=name or (f"{family}:{canonical}" if canonical else family),
        matrix=matrix,
        scale=scale,
        output=fam.output,
        description=f"{fam.description} ({'×'.join(map(str, matrix.shape))})",
        tags=fam.tags,
        source=source,
    )


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).strip()
