"""imgconv: exact image convolution, named kernels and CNN-style layers.

The array API is importable from the top level::

    >>> import numpy as np, imgconv
    >>> imgconv.correlate(np.eye(3), [[1, 2, 3]], padding="valid").tolist()
    [[1.0], [2.0], [3.0]]

The names are loaded on first use, so the command line's help does not pay for numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "activate", "conv2d", "convolve", "correlate", "pool"]
_CORE_NAMES = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from imgconv.core import activate, conv2d, convolve, correlate, pool


def __getattr__(name: str) -> Any:
    if name in _CORE_NAMES:
        from imgconv import core

        value = getattr(core, name)
        globals()[name] = value  # later lookups skip this function (a microsecond a call)
        return value
    raise AttributeError(f"module 'imgconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and the lazily loaded ones, for ``dir()`` and completion."""
    return sorted({*globals(), *__all__})
