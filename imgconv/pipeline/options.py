"""A layer's settings and their defaults, once: :class:`LayerOptions`.

The command line builds one from its flags (and takes its defaults from here),
a pipeline file from each stage's keys (:mod:`imgconv.pipeline.spec`), and
Python code from keyword arguments (:meth:`imgconv.pipeline.Pipeline.from_options`).
The values are checked when the stages are made
(:func:`imgconv.pipeline.layer.build_stages`). This module imports nothing,
so the command line's start-up can read the defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class LayerOptions:
    """How each kernel of a layer is applied, and what follows the last one.

    Numbers may be given as text (``"2,3"``, as the command line has them),
    ints or pairs.

    >>> LayerOptions(stride="2", pool="max", pool_size=2).changed()
    ['stride', 'pool', 'pool_size']
    """

    mode: str = "correlate"
    padding: str | int | Sequence[int] = "same"
    pad_mode: str = "reflect"
    cval: float = 0.0
    stride: int | str | Sequence[int] = 1
    dilation: int | str | Sequence[int] = 1
    activation: str = "none"
    pool: str | None = None
    pool_size: int | str | Sequence[int] | None = None
    pool_stride: int | str | Sequence[int] | None = None
    pool_padding: int | str | Sequence[int] = 0
    pool_dilation: int | str | Sequence[int] = 1
    pool_ceil: bool = False
    pool_count_pad: bool = True
    #: added to the first kernel's maps: a number, ``"0.1,0.2"`` or a .npy file
    bias: str | float | Sequence[float] | None = None

    #: the settings of each convolution stage (a pipeline file's stage keys)
    CONV = ("mode", "padding", "pad_mode", "cval", "stride", "dilation")

    def changed(self) -> list[str]:
        """The settings that differ from the defaults (as written: ``"1"`` is ``1``)."""
        default = LayerOptions()
        return [f.name for f in dataclasses.fields(self)
                if str(getattr(self, f.name)) != str(getattr(default, f.name))]

    #: the pooling settings besides `pool` (the op) and `pool_size`
    POOL = ("pool_stride", "pool_padding", "pool_dilation", "pool_ceil", "pool_count_pad")

    def conv(self) -> dict[str, Any]:
        """The convolution settings, as :func:`imgconv.pipeline.layer.conv_stage` takes them."""
        return {name: getattr(self, name) for name in self.CONV}
