"""Kernel and KernelBank, the choices they carry, and how bank responses combine."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.core.conv import as_kernel
from imgconv.errors import KernelError
from imgconv.kernels.text import short

OUTPUT_MAPS = ("clip", "abs", "offset", "normalize")
# The largest kernel side (and channel count), for every kernel: a family's, a file's,
# an inline one and a Kernel made in Python. Big enough for any sensible blur, small
# enough not to exhaust memory by a typo (a 1001×1001 file is read and shown in seconds).
MAX_SIZE = 1001
# Images of up to 16 bits are filtered in float32: a larger weight, scale or bias
# would overflow to infinity (a black image).
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: How a bank's responses become its result: one map (the first five), or one map per
#: member (``stack``: a layer's feature maps, in the members' order, on the last axis)
COMBINES = ("magnitude", "max", "min", "sum", "mean", "stack")


def suggest(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean X?)"`` for the closest of ``choices``, or ``""``.

    >>> suggest("matrx", ["matrix", "scale"])
    ' (did you mean matrix?)'
    >>> suggest("sobl", ["sobel", "sobel-x", "sobel-y", "box"])
    ' (did you mean sobel, sobel-x or sobel-y?)'
    >>> suggest("zzz", ["matrix"])
    ''
    """
    def score(choice: str) -> float:
        return difflib.SequenceMatcher(None, word, choice).ratio()

    # The best first; ties in alphabetical order, so messages are stable.
    close = sorted(difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6),
                   key=lambda c: (-score(c), c))
    if not close:
        return ""
    listed = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f" (did you mean {listed}?)"


def check_choice(value: object, choices: Sequence[str], what: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise KernelError listing them.

    >>> check_choice("max", COMBINES, "combine")
    'max'
    >>> check_choice("maks", COMBINES, "combine")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    imgconv.errors.KernelError: combine must be one of magnitude, max, min, sum, mean, stack; ...
    """
    if isinstance(value, str) and value in choices:
        return value
    hint = suggest(value, choices) if isinstance(value, str) else ""
    raise KernelError(f"{what} must be one of {', '.join(choices)}; got {short(value)}{hint}")


def check_matrix(matrix: object) -> NDArray[np.float64]:
    """A read-only float64 copy of ``matrix``: 2-D or 3-D, non-empty, finite."""
    try:
        arr = np.array(as_kernel(matrix), dtype=np.float64, copy=True)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise KernelError(str(exc).replace("kernel must", "the matrix must", 1)) from None
    big = np.abs(arr) > FLOAT32_MAX
    if big.any():
        at = tuple(int(i) for i in np.argwhere(big)[0])
        names = ("row", "column", "channel")[:len(at)]
        place = ", ".join(f"{n} {i + 1}" for n, i in zip(names, at, strict=True))
        raise KernelError(f"the matrix value {arr[at]:g} at {place} is larger than "
                          f"float32's largest, {FLOAT32_MAX:.4g}")
    if max(arr.shape) > MAX_SIZE:
        shape = "×".join(map(str, arr.shape))
        raise KernelError(f"the matrix is {shape}, larger than the limit of {MAX_SIZE} a side")
    arr.setflags(write=False)
    return arr


def check_number(value: object, what: str) -> float:
    """``value`` as a finite float; booleans and non-numbers are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise KernelError(f"{what} must be a number, got {short(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise KernelError(f"{what} must be a finite number, got a too large integer") from None
    if not np.isfinite(number):
        raise KernelError(f"{what} must be a finite number, got {number}")
    if abs(number) > FLOAT32_MAX:
        raise KernelError(f"{what} {number:g} is larger than float32's largest, "
                          f"{FLOAT32_MAX:.4g}")
    return number


def check_weights(matrix: NDArray[np.float64], scale: float) -> None:
    """Refuse weights ``matrix * scale`` beyond float32 (what images are filtered in)."""
    peak = float(np.abs(matrix).max()) * abs(scale)
    if peak > FLOAT32_MAX:
        raise KernelError(f"the weights (matrix × scale) reach {peak:g}, larger than "
                          f"float32's largest, {FLOAT32_MAX:.4g}")


def check_anchor(anchor: object, shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``anchor`` as ``(ay, ax)`` inside a kernel of ``shape``, or ``None``.

    >>> check_anchor([0, 2], (3, 3))
    (0, 2)
    """
    if anchor is None:
        return None
    kh, kw = shape[0], shape[1]
    pair = tuple(anchor) if isinstance(anchor, (list, tuple)) else ()
    if (
        len(pair) != 2
        or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in pair)
        or not (0 <= pair[0] < kh and 0 <= pair[1] < kw)
    ):
        raise KernelError(
            f"anchor must be two ints [ay, ax] with 0 <= ay < {kh} and 0 <= ax < {kw}, "
            f"got {short(anchor)}"
        )
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True, eq=False)
class Kernel:
    """A named kernel: a matrix as written, a scale and bias, an anchor and hints.

    ``weights`` (``matrix * scale``) is in correlation form, what
    :func:`imgconv.correlate` takes. A 3-D matrix ``(kh, kw, C)`` is a
    multi-channel filter (one slice per input channel, summed into one map).

    Examples
    --------
    >>> k = Kernel("blur", [[1, 2, 1], [2, 4, 2], [1, 2, 1]], scale=1 / 16)
    >>> k.shape, k.center, float(k.weights.sum())
    ((3, 3), (1, 1), 1.0)
    """

    name: str
    matrix: NDArray[np.float64]
    scale: float = 1.0
    bias: float = 0.0
    anchor: tuple[int, int] | None = None
    output: str | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    source: str = "built-in"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "tags", tuple(self.tags))
        try:
            set_(self, "matrix", check_matrix(self.matrix))
            set_(self, "scale", check_number(self.scale, "scale"))
            set_(self, "bias", check_number(self.bias, "bias"))
            if self.scale == 0:
                raise KernelError("scale must not be zero")
            check_weights(self.matrix, self.scale)
            set_(self, "anchor", check_anchor(self.anchor, self.matrix.shape))
            if self.output is not None:
                check_choice(self.output, OUTPUT_MAPS, "output")
        except KernelError as exc:
            raise KernelError(f"kernel {short(self.name)}: {exc}") from None

    @property
    def weights(self) -> NDArray[np.float64]:
        """The effective weights ``matrix * scale`` (float64, correlation form)."""
        return self.matrix * self.scale

    @property
    def shape(self) -> tuple[int, ...]:
        """``(kh, kw)`` or ``(kh, kw, C)``."""
        return tuple(int(n) for n in self.matrix.shape)

    @property
    def channels(self) -> int | None:
        """``C`` for a multi-channel filter, ``None`` for a 2-D kernel."""
        return int(self.matrix.shape[2]) if self.matrix.ndim == 3 else None

    @property
    def center(self) -> tuple[int, int]:
        """The anchor, or the centre ``(kh // 2, kw // 2)`` when none is given."""
        if self.anchor is not None:
            return self.anchor
        return int(self.matrix.shape[0]) // 2, int(self.matrix.shape[1]) // 2

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Kernel):
            return NotImplemented
        return (
            self.matrix.shape == other.matrix.shape
            and bool(np.array_equal(self.matrix, other.matrix))
            and _fields(self) == _fields(other)
        )

    def __hash__(self) -> int:
        return hash((_fields(self), self.matrix.shape, self.matrix.tobytes()))


def _fields(kernel: Kernel) -> tuple[Any, ...]:
    return (kernel.name, kernel.scale, kernel.bias, kernel.anchor, kernel.output,
            kernel.description, kernel.tags, kernel.source)


@dataclass(frozen=True)
class KernelBank:
    """Several kernels applied to the same image, their responses combined.

    Every member has the same shape, so the responses line up under any padding.

    Examples
    --------
    >>> gx = Kernel("gx", [[-1, 0, 1]])
    >>> bank = KernelBank("grad", (gx, Kernel("gx2", [[1, 0, -1]])), "max")
    >>> bank.shape, len(bank.kernels)
    ((1, 3), 2)
    """

    name: str
    kernels: tuple[Kernel, ...]
    combine: str
    output: str | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    source: str = "built-in"
    _shape: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernels", tuple(self.kernels))
        object.__setattr__(self, "tags", tuple(self.tags))
        if not self.kernels:
            raise KernelError(f"bank {short(self.name)} has no kernels")
        check_choice(self.combine, COMBINES, f"bank {short(self.name)}: combine")
        if self.output is not None:
            check_choice(self.output, OUTPUT_MAPS, f"bank {short(self.name)}: output")
        shapes = {k.shape for k in self.kernels}
        if len(shapes) > 1:
            listed = ", ".join(f"{k.name} {_shape_text(k.shape)}" for k in self.kernels)
            raise KernelError(
                f"bank {short(self.name)}: all kernels must have the same shape, got {listed}"
            )
        object.__setattr__(self, "_shape", self.kernels[0].shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape every member shares."""
        return self._shape


def _shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(n) for n in shape)


class Fold:
    """Combine same-shape responses one at a time into one accumulator: :func:`combine`.

    ``stack`` keeps every response (one map each) and stacks them on a new last axis.

    A bank's responses can be folded in as each is computed, so that two planes
    are alive rather than one per member. With ``owned``, a response is the
    caller's to give away and may be written over (the first becomes the
    accumulator). ``dtype`` is the accumulator's (default: the first
    response's floating dtype, float64 for integers).
    """

    def __init__(self, how: str, count: int, *, dtype: Any = None, owned: bool = False) -> None:
        self.how = check_choice(how, COMBINES, "combine")
        self.count, self.dtype, self.owned = count, dtype, owned
        self.acc: NDArray[Any] | None = None
        self.maps: list[NDArray[Any]] = []

    def add(self, response: NDArray[Any]) -> None:
        r = np.asarray(response)
        if self.how == "stack":
            if self.maps and r.shape != self.maps[0].shape:
                raise ValueError(f"combine needs responses of the same shape, got "
                                 f"{sorted({self.maps[0].shape, r.shape})}")
            dtype = np.dtype(self.dtype if self.dtype is not None
                             else r.dtype if r.dtype.kind == "f" else np.float64)
            self.maps.append(r if self.owned and r.dtype == dtype else r.astype(dtype))
            return
        if self.acc is None:
            dtype = np.dtype(self.dtype if self.dtype is not None
                             else r.dtype if r.dtype.kind == "f" else np.float64)
            acc = r if self.owned and r.dtype == dtype else r.astype(dtype, copy=True)
            if self.how == "magnitude":
                np.multiply(acc, acc, out=acc)
            self.acc = acc
            return
        acc = self.acc
        if r.shape != acc.shape:
            raise ValueError(f"combine needs responses of the same shape, got "
                             f"{sorted({acc.shape, r.shape})}")
        if self.how == "magnitude":
            if self.owned and r.dtype == acc.dtype:
                acc += np.multiply(r, r, out=r)
            else:
                acc += np.square(r, dtype=acc.dtype)
        elif self.how in ("sum", "mean"):
            np.add(acc, r, out=acc, casting="unsafe")
        else:
            (np.maximum if self.how == "max" else np.minimum)(acc, r, out=acc, casting="unsafe")

    def result(self) -> NDArray[Any]:
        if self.how == "stack" and self.maps:
            return np.stack(self.maps, axis=-1)
        if self.acc is None:
            raise ValueError("combine needs at least one response")
        if self.how == "magnitude":
            np.sqrt(self.acc, out=self.acc)
        elif self.how == "mean":
            self.acc /= self.count
        return self.acc


def combine(responses: Sequence[NDArray[Any]], how: str) -> NDArray[Any]:
    """Combine same-shape responses elementwise: one of :data:`COMBINES`.

    ``magnitude`` is ``sqrt(sum r**2)``; ``mean`` is ``sum / n``; ``stack`` keeps
    them all, on a new last axis. The result has the floating dtype the responses
    share (float64 for integer input).

    Examples
    --------
    >>> import numpy as np
    >>> combine([np.array([3.0, -1.0]), np.array([4.0, 2.0])], "magnitude").tolist()
    [5.0, 2.23606797749979]
    >>> combine([np.array([3.0, -1.0]), np.array([4.0, 2.0])], "min").tolist()
    [3.0, -1.0]
    >>> combine([np.array([3.0, -1.0]), np.array([4.0, 2.0])], "stack").tolist()
    [[3.0, 4.0], [-1.0, 2.0]]
    """
    check_choice(how, COMBINES, "combine")
    arrays = [np.asarray(r) for r in responses]
    if not arrays:
        raise ValueError("combine needs at least one response")
    dtype = np.result_type(*arrays)
    fold = Fold(how, len(arrays), dtype=dtype if dtype.kind == "f" else np.float64)
    for a in arrays:
        fold.add(a)
    return fold.result()


def rotate_matrix(matrix: NDArray[np.float64], degrees: int) -> NDArray[np.float64]:
    """Rotate a square kernel anticlockwise (as shown on screen) by a multiple of 45°.

    Multiples of 90° turn the whole array; 45° steps shift each ring of an
    odd-sized kernel by one eighth of its length (the classic compass rotation).
    Channels (a third axis) rotate together.

    >>> rotate_matrix(np.array([[5., 5, 5], [-3, 0, -3], [-3, -3, -3]]), 45).tolist()
    [[5.0, 5.0, -3.0], [5.0, 0.0, -3.0], [-3.0, -3.0, -3.0]]
    """
    kh, kw = matrix.shape[:2]
    if degrees % 45:
        raise KernelError(f"rotation must be a multiple of 45 degrees, got {degrees}")
    if kh != kw and degrees % 180:
        raise KernelError(f"only a square kernel can be rotated by {degrees}°, got {kh}×{kw}")
    quarter, eighth = divmod(degrees % 360, 90)
    out = np.rot90(matrix, quarter, axes=(0, 1))
    if eighth:
        if kh % 2 == 0:
            raise KernelError(f"only an odd-sized kernel can be rotated by 45°, got {kh}×{kw}")
        out = out.copy()
        c = kh // 2
        for r in range(1, c + 1):
            lo, hi = c - r, c + r
            ring = (
                [(lo, j) for j in range(lo, hi + 1)]
                + [(i, hi) for i in range(lo + 1, hi + 1)]
                + [(hi, j) for j in range(hi - 1, lo - 1, -1)]
                + [(i, lo) for i in range(hi - 1, lo, -1)]
            )
            rows, cols = np.array(ring).T
            values = out[rows, cols].copy()
            out[rows, cols] = np.roll(values, -r, axis=0)
    result: NDArray[np.float64] = np.ascontiguousarray(out, dtype=np.float64)
    return result
