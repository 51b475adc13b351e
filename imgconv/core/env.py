"""Reading the core's environment variables on every call, cheaply.

``os.environ.get`` of a variable that is not set raises and catches a
``KeyError`` inside ``os``: about a microsecond, asked two or three times a
call (``IMGCONV_JIT``, ``IMGCONV_THREADS``), which on a 28x28 image is a
tenth of the whole correlation. :func:`getenv` reads the mapping
``os.environ`` keeps (and updates on every assignment, as ``monkeypatch``'s
do) directly where it can, and falls back to ``os.environ.get`` elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

_data: dict[Any, Any] | None = getattr(os.environ, "_data", None)
_encode: Callable[[str], Any] | None = getattr(os.environ, "encodekey", None)
_decode: Callable[[Any], str] | None = getattr(os.environ, "decodevalue", None)
_usable = isinstance(_data, dict) and callable(_encode) and callable(_decode)


def getenv(name: str) -> str:
    """``os.environ.get(name, "")``.

    >>> getenv("IMGCONV_NO_SUCH_VARIABLE")
    ''
    """
    if _usable:
        assert _data is not None and _encode is not None and _decode is not None
        raw = _data.get(_encode(name))
        return "" if raw is None else _decode(raw)
    return os.environ.get(name, "")
