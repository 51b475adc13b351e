"""The convolution core: arrays in, arrays out. numpy does the arithmetic.

scipy.ndimage is never called here; it is the reference the tests and
``imgconv check`` compare against.
"""

from imgconv.core.conv import convolve, correlate, correlate_into, output_shape
from imgconv.core.geometry import Geometry, output_size, resolve_padding
from imgconv.core.jit import JitUnavailable, set_jit
from imgconv.core.layers import conv2d
from imgconv.core.padding import PAD_MODE_ALIASES, PAD_MODES
from imgconv.core.pooling import ACTIVATIONS, POOL_OPS, activate, pool
from imgconv.core.threads import get_threads, set_threads

__all__ = [
    "ACTIVATIONS",
    "PAD_MODES",
    "PAD_MODE_ALIASES",
    "POOL_OPS",
    "Geometry",
    "JitUnavailable",
    "activate",
    "conv2d",
    "convolve",
    "correlate",
    "correlate_into",
    "get_threads",
    "output_shape",
    "output_size",
    "pool",
    "resolve_padding",
    "set_jit",
    "set_threads",
]
