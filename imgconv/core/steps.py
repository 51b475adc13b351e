"""A tap program's steps: the passes both executors run, and nothing else (a leaf module).

:mod:`imgconv.core.taps` compiles a kernel into a list of :class:`Step`;
numpy runs each as one ufunc (``Program.run``) and :mod:`imgconv.core.jit`
compiles the list into one loop. Both import the op codes from here.
"""

from __future__ import annotations

from typing import NamedTuple

#: ``(source index, row offset, column offset)``
Tap = tuple[int, int, int]


#: Step operations. Each writes one register (0: the accumulator, 1: the
#: scratch buffer) from shifted views ``a`` and ``b`` of the sources, itself,
#: or the other register, elementwise in the register's dtype.
COPY, SCALE, SUM, DIFF, ADD, SUB, MUL, ADD_SCRATCH, SUB_SCRATCH, ZERO = range(10)
ACC, SCRATCH = 0, 1


class Step(NamedTuple):
    """One pass over the tile: ``op`` of :data:`COPY` ... :data:`ZERO` into register ``reg``.

    ===============  =========================
    ``COPY``         ``R = a``
    ``SCALE``        ``R = a * weight``
    ``SUM``          ``R = a + b``
    ``DIFF``         ``R = a - b``
    ``ADD``          ``R = R + a``
    ``SUB``          ``R = R - a``
    ``MUL``          ``R = R * weight``
    ``ADD_SCRATCH``  ``acc = acc + scratch``
    ``SUB_SCRATCH``  ``acc = acc - scratch``
    ``ZERO``         ``R = 0``
    ===============  =========================

    A named tuple: a program's steps are a cache key on every compiled call,
    and a tuple hashes in C (a frozen dataclass's hash, in Python, cost
    about 4 µs a 3x3 call).
    """

    op: int
    reg: int = ACC
    a: Tap | None = None
    b: Tap | None = None
    weight: float = 1.0
