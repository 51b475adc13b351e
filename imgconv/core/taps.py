"""Weighted sums of shifted views, evaluated in place with as few passes as possible.

A correlation over a tile is a sum of taps: ``weight * source[dy + sy*r, dx + sx*c]``.
A :class:`Program` groups the taps by the magnitude of their weight, so that
each group costs one add or subtract per tap and a single multiply, and taps of
weight ±1 cost no multiply at all::

    diagonal [[-1,-1, 2],       2 * (c + e + g)  -  a - b - d - f - h - i
              [-1, 2,-1],       9 passes instead of 9 multiplies + 8 adds
              [ 2,-1,-1]]

Zero taps are skipped. Every pass is a numpy ufunc writing into an existing
buffer (``out=``), so nothing is allocated per tap. :meth:`Program.cost` counts
the passes and is what the cost model in :mod:`imgconv.core.strategies` uses.

Kernels of low rank are split by :func:`low_rank` into ``r`` pairs of 1-D
factors, the separable strategy's input.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.core.spans import flat
from imgconv.core.steps import (
    ACC,
    ADD,
    ADD_SCRATCH,
    COPY,
    DIFF,
    MUL,
    SCALE,
    SCRATCH,
    SUB,
    SUB_SCRATCH,
    SUM,
    ZERO,
    Step,
    Tap,
)

#: A step as :meth:`Program.run` takes it: ``(op, reg, a, b, weight)``, each
#: tap as its source's index and the slices of its view
Bound = tuple[int, int, "tuple[int, tuple[slice, ...]] | None",
              "tuple[int, tuple[slice, ...]] | None", float]

#: Outputs from which a pass over pitched rows runs as one 1-D span
#: (``Program.run``'s ``spans``): below it, making the spans costs more than
#: the passes save (docs/performance.md, "How the constants were set").
SPAN_MIN_PIXELS = 1 << 11

#: Rows up to this many places wide are passed over as 1-D spans. numpy 2.4
#: runs a ufunc over a 2-D window whose rows are at most 2048 places wide
#: 2.4-5x slower than over the same places as one 1-D span, and over wider
#: rows within 17 % of it (float32, float64 and int16 alike; the 2-D
#: iterator buffers the narrow rows): there the spans' set-up did not pay
#: (docs/performance.md, "How the constants were set").
SPAN_MAX_COLS = 2048


def _as_spans(
    sources: Sequence[NDArray[Any]] | NDArray[Any], acc: NDArray[Any],
    scratch: NDArray[Any] | None, shape: tuple[int, int],
) -> tuple[list[NDArray[Any]], NDArray[Any], NDArray[Any] | None, int] | None:
    """The sources and registers as 1-D spans of rows of one pitch, else None.

    Each register's span is its first ``(rows - 1) * pitch + cols`` places.
    """
    found = [flat(s, writeable=False) for s in sources]
    regs = [flat(r[: shape[0], : shape[1]], writeable=True) for r in (acc, scratch)
            if r is not None]
    pitches = {f[1][0] for f in (*found, *regs) if f is not None}
    if None in found or None in regs or len(pitches) != 1:
        return None
    pitch = pitches.pop()
    length = (shape[0] - 1) * pitch + shape[1]
    spans = [f[0][:length] for f in regs if f is not None]
    return ([f[0] for f in found if f is not None], spans[0],
            spans[1] if scratch is not None else None, pitch)


@dataclass(frozen=True)
class Group:
    """Taps sharing the weight magnitude ``weight``: ``weight * (sum(plus) - sum(minus))``."""

    weight: float
    plus: tuple[Tap, ...]
    minus: tuple[Tap, ...]

    @property
    def size(self) -> int:
        return len(self.plus) + len(self.minus)

    def first_cost(self) -> int:
        """Passes when this group starts the accumulator."""
        if self.size == 1:
            return 1
        factor = self.weight if self.plus else -self.weight
        return self.size - 1 + (factor != 1.0)

    def later_cost(self) -> int:
        """Passes when this group is added to an accumulator already started."""
        if self.weight == 1.0:
            return self.size
        return 2 if self.size == 1 else self.size + 1


@dataclass(frozen=True)
class Program:
    """A weighted sum of shifted, strided views of one or more source buffers."""

    groups: tuple[Group, ...]

    def cost(self) -> int:
        """Element-wise passes over the output tile that :meth:`run` makes.

        >>> build_program([((0, 0, 0), 1.0), ((0, 0, 1), 1.0), ((0, 0, 2), 1.0)]).cost()
        2
        >>> build_program([((0, 0, 0), 0.5), ((0, 0, 1), 0.25)]).cost()
        3
        """
        if not self.groups:
            return 1
        return self.groups[0].first_cost() + sum(g.later_cost() for g in self.groups[1:])

    def needs_scratch(self) -> bool:
        """Whether :meth:`run` needs a scratch buffer besides the accumulator."""
        return self._needs_scratch

    @cached_property
    def _needs_scratch(self) -> bool:
        return any(g.weight != 1.0 for g in self.groups[1:])

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        """The passes :meth:`run` makes, in order: one :class:`Step` per pass.

        Both executors (numpy's ufuncs in :meth:`run`, and
        :mod:`imgconv.core.jit` when it is on) run exactly these operations in
        this order, in the same dtype, so they give the same bits.

        >>> [s.op == SUM for s in build_program([((0, 0, 0), 1.0), ((0, 0, 1), 1.0)]).steps]
        [True]
        """
        if not self.groups:
            return (Step(ZERO),)
        steps: list[Step] = []
        for index, group in enumerate(self.groups):
            if index == 0:
                if group.size == 1:
                    weight = group.weight if group.plus else -group.weight
                    tap = (group.plus or group.minus)[0]
                    steps.append(Step(COPY, a=tap) if weight == 1.0
                                 else Step(SCALE, a=tap, weight=weight))
                    continue
                sign = _sum_steps(steps, ACC, group.plus, group.minus)
                if sign * group.weight != 1.0:
                    steps.append(Step(MUL, weight=sign * group.weight))
            elif group.weight == 1.0:
                steps += [Step(ADD, a=t) for t in group.plus]
                steps += [Step(SUB, a=t) for t in group.minus]
            else:
                if group.size == 1:
                    steps.append(Step(SCALE, SCRATCH, (group.plus or group.minus)[0],
                                      weight=group.weight))
                    sign = 1 if group.plus else -1
                else:
                    sign = _sum_steps(steps, SCRATCH, group.plus, group.minus)
                    steps.append(Step(MUL, SCRATCH, weight=group.weight))
                steps.append(Step(ADD_SCRATCH if sign > 0 else SUB_SCRATCH))
        return tuple(steps)

    def run(
        self,
        sources: Sequence[NDArray[Any]] | NDArray[Any],
        shape: tuple[int, int],
        stride: tuple[int, int],
        acc: NDArray[Any],
        scratch: NDArray[Any] | None,
        *,
        compiled: bool | None = None,
        spans: bool = False,
    ) -> None:
        """Write the sum into ``acc`` (shape ``shape``), using ``scratch`` for weighted groups.

        ``sources`` is a sequence of 2-D buffers, or one 3-D array of them.
        They may have any real dtype (an integer image read in place): every
        pass computes in ``acc``'s dtype. With the compiled path on
        (:func:`imgconv.core.jit.enabled`) the whole program is one compiled
        call when :func:`imgconv.core.jit.run` takes the buffers, else one
        numpy ufunc per :class:`Step`. ``compiled``: whether the path is on,
        when the caller has just asked (None: ask).

        ``spans``: the caller owns the places between ``acc``'s rows (and
        ``scratch``'s), beyond ``shape``'s columns, and lets the numpy executor
        overwrite them; and the places between the sources' rows are pixels it
        may read. When every buffer then has the same row pitch and the stride
        is 1, each pass runs over one 1-D span of pitched rows
        (:mod:`imgconv.core.spans`), computing those places too: the same sums
        where the outputs are.
        """
        from imgconv.core import jit

        if compiled is None:
            compiled = jit.enabled()
        if compiled and jit.run(self.steps, sources, stride, acc):
            return
        scalar = acc.dtype.type
        dtype = acc.dtype
        pitch = None
        if (spans and stride == (1, 1) and shape[0] > 1 and shape[1] <= SPAN_MAX_COLS
                and shape[0] * shape[1] >= SPAN_MIN_PIXELS):
            found = _as_spans(sources, acc, scratch, shape)
            if found is not None:
                sources, acc, scratch, pitch = found
        regs = (acc, scratch)
        for op, r, a, b, weight in self._bound(shape, stride, pitch):
            reg = regs[r]
            assert reg is not None
            # dtype=: a view may be of an integer image, which must not be summed in its own type
            if a is not None:
                va = sources[a[0]][a[1]]
            if op == ADD:
                np.add(reg, va, out=reg, dtype=dtype)
            elif op == SUB:
                np.subtract(reg, va, out=reg, dtype=dtype)
            elif op in (SUM, DIFF):
                assert b is not None
                (np.add if op == SUM else np.subtract)(va, sources[b[0]][b[1]], out=reg,
                                                       dtype=dtype)
            elif op == MUL:
                np.multiply(reg, scalar(weight), out=reg)
            elif op == SCALE:
                np.multiply(va, scalar(weight), out=reg, dtype=dtype)
            elif op == COPY:
                np.copyto(reg, va)
            elif op in (ADD_SCRATCH, SUB_SCRATCH):
                assert scratch is not None
                (np.add if op == ADD_SCRATCH else np.subtract)(acc, scratch, out=acc)
            else:
                reg.fill(0)

    @cached_property
    def _bindings(
        self,
    ) -> dict[tuple[tuple[int, int], tuple[int, int], int | None], tuple[Bound, ...]]:
        return {}

    def _bound(self, shape: tuple[int, int], stride: tuple[int, int],
               pitch: int | None = None) -> tuple[Bound, ...]:
        """:attr:`steps` with each tap's source and slices for this output shape and stride.

        With a ``pitch``, each view is a 1-D slice of its source's span of
        rows (:func:`_as_spans`). Kept for a few shapes (a plane's tiles have
        one or two): working out the slices of every tap again on every tile
        cost about a microsecond a step, which on a 28x28 image is as much as
        the pass itself.
        """
        key = (shape, stride, pitch)
        found = self._bindings.get(key)
        if found is None:
            rows, cols = shape
            sy, sx = stride
            hr, hc = sy * (rows - 1) + 1, sx * (cols - 1) + 1

            def where(tap: Tap | None) -> tuple[int, tuple[slice, ...]] | None:
                if tap is None:
                    return None
                src, dy, dx = tap
                if pitch is not None:
                    start = dy * pitch + dx
                    return src, (slice(start, start + (rows - 1) * pitch + cols),)
                return src, (slice(dy, dy + hr, sy), slice(dx, dx + hc, sx))

            found = tuple((s.op, s.reg, where(s.a), where(s.b), s.weight) for s in self.steps)
            if len(self._bindings) < 16:
                self._bindings[key] = found
        return found


def _sum_steps(steps: list[Step], reg: int, plus: tuple[Tap, ...], minus: tuple[Tap, ...]) -> int:
    """Append ``R = sum(plus) - sum(minus)`` (two or more taps) and return +1.

    With no ``plus`` taps it writes ``sum(minus)`` and returns -1, leaving the
    sign to the multiply that follows rather than spending a pass on negation.
    """
    if plus:
        first, pos, neg, sign = plus[0], list(plus[1:]), list(minus), 1
    else:
        first, pos, neg, sign = minus[0], list(minus[1:]), [], -1
    if pos:
        steps.append(Step(SUM, reg, first, pos.pop(0)))
    else:
        steps.append(Step(DIFF, reg, first, neg.pop(0)))
    steps += [Step(ADD, reg, t) for t in pos]
    steps += [Step(SUB, reg, t) for t in neg]
    return sign


def build_program(taps: Iterable[tuple[Tap, float]]) -> Program:
    """Group taps ``((source, dy, dx), weight)`` by weight magnitude; zeros are dropped.

    The group that saves a pass by starting the accumulator (one with a
    positive tap or a weight other than ±1) goes first.
    """
    by_weight: dict[float, tuple[list[Tap], list[Tap]]] = {}
    for tap, weight in taps:
        if weight == 0.0:
            continue
        plus, minus = by_weight.setdefault(abs(weight), ([], []))
        (plus if weight > 0 else minus).append(tap)
    groups = [Group(w, tuple(p), tuple(m)) for w, (p, m) in by_weight.items()]
    if groups:
        best = max(range(len(groups)),
                   key=lambda i: groups[i].later_cost() - groups[i].first_cost())
        groups.insert(0, groups.pop(best))
    return Program(tuple(groups))


def program_2d(kernel: NDArray[Any], dilation: tuple[int, int], source: int = 0) -> Program:
    """The direct program of a 2-D kernel: one tap per non-zero weight."""
    dy, dx = dilation
    return build_program(
        ((source, i * dy, j * dx), float(w)) for (i, j), w in np.ndenumerate(kernel)
    )


def column_program(u: NDArray[Any], dy: int, source: int = 0) -> Program:
    """A vertical 1-D pass: ``sum_i u[i] * source[i*dy + r]``."""
    return build_program(((source, i * dy, 0), float(w)) for i, w in enumerate(u))


def row_program(vs: Sequence[NDArray[Any]], dx: int) -> Program:
    """The horizontal passes of all pairs, summed: ``sum_k sum_j vs[k][j] * source_k[c + j*dx]``."""
    return build_program(
        ((k, 0, j * dx), float(w)) for k, v in enumerate(vs) for j, w in enumerate(v)
    )


def exact_rtol(dtype: np.dtype[Any]) -> float:
    """The residual, relative to the largest weight, below which a split counts as exact.

    Ten units of rounding of the dtype the correlation computes in: float32
    work cannot tell a residual of 1e-8 (a float64 gaussian rounded to
    float32) from zero, and float64 work must not drop one of 5e-13.

    >>> exact_rtol(np.dtype(np.float32)) > 1e-6 > 1e-14 > exact_rtol(np.dtype(np.float64))
    True
    """
    work = dtype if dtype.kind == "f" and dtype.itemsize <= 4 else np.dtype(np.float64)
    return 10 * float(np.finfo(work).eps)


def low_rank(
    kernel: NDArray[Any], rtol: float | None = None
) -> list[tuple[NDArray[Any], NDArray[Any]]]:
    """Split ``kernel`` into pairs ``(u, v)`` with ``kernel == sum(outer(u, v))``.

    Cross approximation with complete pivoting: each step takes the largest
    remaining entry as pivot, so integer kernels keep small rational factors
    (sobel-x is exactly ``[1, 2, 1] x [-1, 0, 1]`` up to sign) rather than the
    irrational ones an SVD gives, and ±1 taps stay ±1. The steps run in
    float64 whatever the kernel's dtype. They stop when the residual is below
    ``rtol`` of the largest entry (default :func:`exact_rtol` of the kernel's
    dtype: exact to the precision the correlation computes in), which for a
    full-rank kernel happens after ``min(kh, kw)`` steps, when the residual is
    zero.

    >>> sobel_x = np.array([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]])
    >>> [(u.tolist(), v.tolist()) for u, v in low_rank(sobel_x)]
    [([-1.0, -2.0, -1.0], [1.0, -0.0, -1.0])]
    """
    if rtol is None:
        rtol = exact_rtol(np.asarray(kernel).dtype)
    k = np.array(kernel, dtype=np.float64)
    scale = float(np.abs(k).max(initial=0.0))
    residual = k.copy()
    pairs: list[tuple[NDArray[Any], NDArray[Any]]] = []
    while scale > 0.0 and len(pairs) < min(k.shape):
        i, j = np.unravel_index(int(np.argmax(np.abs(residual))), residual.shape)
        pivot = residual[i, j]
        if abs(pivot) <= rtol * scale:
            break
        u = residual[:, j].copy()
        v = residual[i, :] / pivot
        pairs.append((u, v))
        residual -= np.outer(u, v)
        # the pivot's row and column are exactly zero in exact arithmetic
        residual[i, :] = 0.0
        residual[:, j] = 0.0
    return [_balance(u, v) for u, v in pairs]


def rank_at_most(kernel: NDArray[Any], pairs: int) -> bool:
    """Whether :func:`low_rank` splits ``kernel`` into at most ``pairs`` pairs.

    The same cross approximation, stopped after ``pairs`` steps and without
    :func:`_balance`: ``pairs`` passes over the kernel, where splitting a
    full-rank 1001x1001 kernel in full takes minutes.

    >>> rank_at_most(np.ones((50, 50)), 1), rank_at_most(np.eye(50), 4)
    (True, False)
    """
    rtol = exact_rtol(np.asarray(kernel).dtype)
    residual = np.array(kernel, dtype=np.float64)
    scale = float(np.abs(residual).max(initial=0.0))
    for _ in range(pairs + 1):
        i, j = np.unravel_index(int(np.argmax(np.abs(residual))), residual.shape)
        pivot = residual[i, j]
        if abs(pivot) <= rtol * scale:
            return True
        residual -= np.outer(residual[:, j], residual[i, :] / pivot)
        residual[i, :] = 0.0
        residual[:, j] = 0.0
    return False


#: :func:`_balance` tries each distinct magnitude of a factor as its unit when a
#: factor has at most this many (small integer kernels, where ±1 taps save passes);
#: longer factors (a wide gaussian) keep the split's own scale
BALANCE_MAX_VALUES = 64


def _balance(u: NDArray[Any], v: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """Move a scale between ``u`` and ``v`` so that the pair costs the fewest passes.

    Dividing a factor by one of its own entries makes that entry exactly 1, so
    the candidates are each distinct magnitude in ``u`` and in ``v``.
    """
    best = (u, v)
    best_cost = column_program(u, 1).cost() + column_program(v, 1).cost()
    if max(np.count_nonzero(u), np.count_nonzero(v)) > BALANCE_MAX_VALUES and max(
            len(set(np.abs(u).tolist())), len(set(np.abs(v).tolist()))) > BALANCE_MAX_VALUES:
        return best
    # sorted(set()), not np.unique, which imports numpy.ma (15 ms of a CLI call)
    for d in sorted(set(np.abs(u[u != 0]).tolist())):
        cand = (u / d, v * d)
        cost = column_program(cand[0], 1).cost() + column_program(cand[1], 1).cost()
        if cost < best_cost:
            best, best_cost = cand, cost
    for e in sorted(set(np.abs(v[v != 0]).tolist())):
        cand = (u * e, v / e)
        cost = column_program(cand[0], 1).cost() + column_program(cand[1], 1).cost()
        if cost < best_cost:
            best, best_cost = cand, cost
    return best


@lru_cache(maxsize=64)
def _low_rank_cached(data: bytes, shape: tuple[int, int], dtype: str) -> tuple[
    tuple[NDArray[Any], NDArray[Any]], ...
]:
    kernel = np.frombuffer(data, dtype=dtype).reshape(shape)
    pairs = []
    for u, v in low_rank(kernel):
        # factors in the working dtype, so the programs group equal weights as applied
        pairs.append((u.astype(dtype), v.astype(dtype)))
    return tuple(pairs)


def factors(kernel: NDArray[Any]) -> tuple[tuple[NDArray[Any], NDArray[Any]], ...]:
    """:func:`low_rank` of ``kernel`` in its dtype, cached: the cost model and strategy share it."""
    k = np.ascontiguousarray(kernel)
    return _low_rank_cached(k.tobytes(), (k.shape[0], k.shape[1]), k.dtype.str)


@lru_cache(maxsize=256)
def _program_2d_cached(data: bytes, shape: tuple[int, int], dtype: str,
                       dilation: tuple[int, int]) -> Program:
    return program_2d(np.frombuffer(data, dtype=dtype).reshape(shape), dilation)


def direct_program(kernel: NDArray[Any], dilation: tuple[int, int]) -> Program:
    """:func:`program_2d` of ``kernel`` (source 0), cached per kernel, dtype and dilation.

    Building a program is pure Python, tens of microseconds for a 3x3 kernel:
    on a small image that is more than the passes themselves. A
    :class:`Program` is immutable, so the cost model, the strategies and every
    thread share one.
    """
    k = np.ascontiguousarray(kernel)
    return _program_2d_cached(k.tobytes(), (k.shape[0], k.shape[1]), k.dtype.str,
                              (int(dilation[0]), int(dilation[1])))


@lru_cache(maxsize=256)
def _separable_programs_cached(data: bytes, shape: tuple[int, int], dtype: str,
                               dilation: tuple[int, int]) -> tuple[tuple[Program, ...], Program]:
    pairs = factors(np.frombuffer(data, dtype=dtype).reshape(shape))
    return (tuple(column_program(u, dilation[0]) for u, _ in pairs),
            row_program([v for _, v in pairs], dilation[1]))


def separable_programs(
    kernel: NDArray[Any], dilation: tuple[int, int]
) -> tuple[tuple[Program, ...], Program]:
    """The vertical programs of :func:`factors` and their summed horizontal program, cached."""
    k = np.ascontiguousarray(kernel)
    return _separable_programs_cached(k.tobytes(), (k.shape[0], k.shape[1]), k.dtype.str,
                                      (int(dilation[0]), int(dilation[1])))
