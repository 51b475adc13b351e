"""Numbers and inline matrices as users type them: ``1/9``, ``1e-3``, ``"0 1 0; 1 -4 1; 0 1 0"``.

What counts as a number:

- Python's float syntax, plus fractions ``A/B``. A Unicode minus ``−`` (U+2212,
  what documents and web pages print) reads as ``-``.
- Digit groups with ``_`` (``1_000``) are accepted, as Python and YAML 1.1 read them.
- Values too large for float64 (``1e400``, a 400-digit integer), NaN and infinity
  are refused: "must be a finite number".
- A value too small for float64 (``1e-400``) underflows to 0, as float() does; it
  is not an error (a zero ``scale`` is refused later on its own).
"""

from __future__ import annotations

import math
import re
import reprlib
from typing import Any

import numpy as np

from imgconv.errors import KernelError

_FRACTION = re.compile(r"^\s*([^/\s]+)\s*/\s*([^/\s]+)\s*$")
# What an inline matrix may contain: numbers, signs, fractions, separators.
INLINE_CHARS = re.compile(r"^[\s0-9eE+\-\u2212_.,;/]+$")
UNICODE_MINUS = "\u2212"


class _Short(reprlib.Repr):
    """:func:`repr` that stops early: lists, mappings and strings are cut, at any size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict = 3, 6, 4
        self.maxstring = self.maxother = self.maxlong = 60

    # PyYAML's lists and mappings as kernel files load them (LineList, LineDict)
    def repr_LineList(self, x: Any, level: int) -> str:
        return self.repr_list(x, level)

    def repr_LineDict(self, x: Any, level: int) -> str:
        return self.repr_dict(x, level)

    def repr_int(self, x: Any, level: int) -> str:
        if abs(x).bit_length() > 200:  # str() of a 4300-digit int raises; this stays cheap
            return f"<an integer of about {int(abs(x).bit_length() * 0.30103)} digits>"
        return super().repr_int(x, level)


_SHORT = _Short()


def short(value: object) -> str:
    """``repr(value)`` for a message, cut short however large ``value`` is.

    >>> short(list(range(100)))
    '[0, 1, 2, 3, 4, 5, ...]'
    >>> short("abc")
    "'abc'"
    """
    return _SHORT.repr(value)


def _too_big(value: int) -> str:
    digits = len(str(abs(value))) if abs(value) < 10**4000 else "thousands of"
    return f"an integer of {digits} digits, too large for a float"


def _plain_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_number(value: object, what: str, *, finite: bool = True) -> float:
    """A YAML scalar or a typed string as a float: ``3``, ``-0.5``, ``"1e-3"``, ``"1/16"``.

    PyYAML reads ``1e-3`` as a string and ``no`` as ``False``: the first is
    accepted here, the second refused with a hint.

    >>> parse_number("1/16", "scale")
    0.0625
    >>> parse_number("1e-3", "matrix value")
    0.001
    >>> parse_number("1/0", "scale")
    Traceback (most recent call last):
    ...
    imgconv.errors.KernelError: scale '1/0' divides by zero
    >>> parse_number(False, "matrix value")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    imgconv.errors.KernelError: matrix value must be a number, got false (YAML reads yes/no/...)
    """
    if isinstance(value, bool):
        raise KernelError(
            f"{what} must be a number, got {str(value).lower()} "
            "(YAML reads yes/no/on/off/true/false as booleans)"
        )
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            number = float(value)
        except OverflowError:
            raise KernelError(
                f"{what} must be a finite number, got {_too_big(int(value))}"
            ) from None
    elif isinstance(value, str):
        text = value.strip().replace(UNICODE_MINUS, "-")
        match = _FRACTION.match(text)
        if match:
            num, den = _plain_number(match[1]), _plain_number(match[2])
            if num is None or den is None:
                raise KernelError(f"{what} {short(value)} is not a number or a fraction like 1/16")
            if den == 0:
                raise KernelError(f"{what} {short(value)} divides by zero")
            number = num / den
        else:
            parsed = _plain_number(text)
            if parsed is None:
                raise KernelError(f"{what} must be a number, got {short(value)}")
            number = parsed
    elif value is None:
        raise KernelError(f"{what} must be a number, got nothing (null)")
    else:
        raise KernelError(f"{what} must be a number, got {short(value)}")
    if finite and not np.isfinite(number):
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:20]}… (too large)"
        raise KernelError(f"{what} must be a finite number, got {shown}")
    return number


def split_rows(text: str) -> list[list[str]]:
    """Split ``"1 2; 3,4"`` (or rows on separate lines) into rows of number strings.

    >>> split_rows("0 1 0; 1,-4,1\\n0 1 0;")
    [['0', '1', '0'], ['1', '-4', '1'], ['0', '1', '0']]
    """
    rows = [row.strip() for row in re.split(r"[;\n]", text)]
    while rows and not rows[-1]:
        rows.pop()
    return [[tok for tok in re.split(r"[,\s]+", row) if tok] for row in rows]


def parse_rows(rows: list[list[object]], what: str = "matrix") -> list[list[float]]:
    """Check rows are non-empty, not ragged and numeric; return floats.

    >>> parse_rows([[1, "1/2"], ["1e-3", 0]])
    [[1.0, 0.5], [0.001, 0.0]]
    >>> parse_rows([[1, 2], [3]])
    Traceback (most recent call last):
    ...
    imgconv.errors.KernelError: matrix row 2 has 1 number but row 1 has 2 (ragged rows)
    """
    if not rows or not any(rows):
        raise KernelError(f"{what} is empty")
    out = []
    for i, row in enumerate(rows, 1):
        if len(row) != len(rows[0]):
            count = f"{len(row)} number{'s' if len(row) != 1 else ''}"
            raise KernelError(
                f"{what} row {i} has {count} but row 1 has {len(rows[0])} (ragged rows)"
            )
        # The common case at C speed: a row of Python numbers that float() reads finite.
        if all(type(v) is int or type(v) is float for v in row):
            try:
                floats = [float(v) for v in row]  # type: ignore[arg-type]
            except OverflowError:  # a huge int: parse_number says which
                floats = []
            if floats and all(map(math.isfinite, floats)):
                out.append(floats)
                continue
        out.append([
            parse_number(v, f"{what} row {i}, column {j}") for j, v in enumerate(row, 1)
        ])
    return out


def parse_inline(text: str) -> list[list[float]]:
    """An inline matrix: rows separated by ``;`` (or newlines), numbers by spaces or commas.

    >>> parse_inline("0 1 0; 1 -4 1; 0 1 0")
    [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]
    >>> parse_inline("1/9, 1/9")
    [[0.1111111111111111, 0.1111111111111111]]
    """
    return parse_rows(split_rows(text))  # type: ignore[arg-type]
