"""Images larger than memory: lazy dask arrays filtered block by block, read and written by region.

Needs the ``scale`` extra (``pip install 'imgconv[scale]'``)::

    >>> import numpy as np, dask.array as da, imgconv.tiled
    >>> x = da.from_array(np.arange(64.0).reshape(8, 8), chunks=3)
    >>> y = imgconv.tiled.correlate(x, [[0, 1, 0], [1, -4, 1], [0, 1, 0]])
    >>> bool(np.allclose(y.compute(), imgconv.correlate(x.compute(),
    ...                                                 [[0, 1, 0], [1, -4, 1], [0, 1, 0]])))
    True

:func:`open` gives a lazy array of a TIFF, ``.npy`` or ``.zarr`` file;
:func:`correlate`, :func:`convolve`, :func:`pool` and :func:`activate` take
the arguments of their in-memory namesakes; :meth:`imgconv.pipeline.Pipeline.run`
takes a dask array too; :func:`save` writes a TIFF, ``.npy`` or ``.zarr``
atomically. Blocks run on dask's threaded scheduler, or on the cluster of an
active ``dask.distributed`` Client.
"""

from __future__ import annotations

try:
    import dask.array  # noqa: F401
except ImportError as exc:  # pragma: no cover - the base install
    raise ImportError(
        "imgconv.tiled needs the scale extra: pip install 'imgconv[scale]'") from exc

from imgconv.tiled.files import open, save
from imgconv.tiled.ops import activate, convolve, correlate, pool

__all__ = ["activate", "convolve", "correlate", "open", "pool", "save"]
