"""Correlation and true convolution of images with kernels and multi-channel filters."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from imgconv.core import jit, strategies
from imgconv.core.geometry import Geometry, normalize_pair, resolve_padding
from imgconv.core.padding import normalize_pad_mode
from imgconv.core.strategies import (
    STRATEGIES,
    Strategy,
    choose_strategy,
    exact_int16,
    readable_in_place,
)
from imgconv.core.threads import get_threads, run_parallel
from imgconv.core.tiles import PARALLEL_MIN_PIXELS, Post

Padding = str | int | tuple[int, int] | tuple[int, int, int, int]
IntPair = int | tuple[int, int]


def working_dtype(dtype: np.dtype[Any]) -> type[np.floating[Any]]:
    """float64 for float64 (and wider) input, float32 for everything else."""
    if dtype.kind == "f" and dtype.itemsize >= 8:
        return np.float64
    return np.float32


def as_image(image: ArrayLike, name: str = "image") -> NDArray[Any]:
    """Check that ``image`` is a real 2-D (H, W) or 3-D (H, W, C) array and return it."""
    arr = np.asarray(image)
    check_image(arr.shape, arr.dtype, name)
    return arr


def check_image(shape: tuple[int, ...], dtype: np.dtype[Any], name: str = "image") -> None:
    """Refuse what is not an image: a dtype of no real numbers, a shape not (H, W) or
    (H, W, C), or an empty one (for any array, numpy's or dask's)."""
    if dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {dtype}")
    if len(shape) not in (2, 3):
        raise ValueError(f"{name} must be 2-D (H, W) or 3-D (H, W, C), got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{name} must not be empty, got shape {shape}")


def as_kernel(kernel: ArrayLike) -> NDArray[np.float64]:
    """Check that ``kernel`` is a finite, non-empty 2-D or 3-D array of real numbers."""
    dtype = getattr(kernel, "dtype", None)
    if dtype is None:
        with contextlib.suppress(ValueError):  # ragged: said below
            dtype = np.asarray(kernel).dtype
    if dtype is not None and dtype.kind == "c":  # refused as a complex image is (as_image)
        raise TypeError(f"kernel must hold real numbers, got dtype {dtype}")
    try:
        arr = np.asarray(kernel, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"kernel must be an array of real numbers: {exc}") from None
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"kernel must be 2-D (kh, kw) or 3-D (kh, kw, C), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"kernel must not be empty, got shape {arr.shape}")
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        where = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"kernel must hold finite numbers, found {arr[where]} at index {where}"
        )
    return arr


class _Plan:
    """What a call's validated arguments come to, kept for the next call with the same ones.

    The kernel in the working dtype (read-only: shared), the geometry, and
    per image dtype and strategy name the strategy to run with its weights
    (:func:`_strategy`). Building these costs far more than correlating a
    28x28 image: validating the kernel, flipping and casting it, the cost
    model, the int16 check.
    """

    __slots__ = ("fill", "geom", "mode", "runs", "weights")

    def __init__(self, weights: NDArray[Any], geom: Geometry, mode: str, fill: float) -> None:
        weights.flags.writeable = False
        self.weights, self.geom, self.mode, self.fill = weights, geom, mode, fill
        # keyed by the strategy's name (None: the cost model's choice), the image's
        # dtype, the path, and the cost model's settings (tests change them)
        self.runs: dict[tuple[Any, ...], tuple[Strategy, NDArray[Any]]] = {}

    def strategy(self, name: str | None, plane: NDArray[Any]) -> tuple[
            Strategy, NDArray[Any]]:
        """:func:`_strategy` for this plan's 2-D weights and a plane of the image.

        Cached per name, image dtype, whether the plane can be read in place,
        and path.
        """
        in_place = readable_in_place(plane, self.weights.dtype)
        key = (name, plane.dtype, in_place, jit.enabled(), strategies.TILE_BYTES,
               strategies.FFT_TILE_ROWS, strategies.FFT_TILE_COLS)
        found = self.runs.get(key)
        if found is None:
            found = self.runs[key] = _strategy(name, self.weights, self.geom, plane.dtype,
                                               self.mode, self.fill, in_place)
        return found


#: Plans by their arguments (:func:`_plan`); the oldest go first when it is full.
_plans: dict[tuple[Any, ...], _Plan] = {}
PLANS_MAX = 256


def _plan(
    img: NDArray[Any],
    kernel: ArrayLike,
    *,
    padding: object,
    pad_mode: object,
    cval: object,
    stride: object,
    dilation: object,
    flip: bool,
) -> _Plan:
    """The validated kernel and geometry for these arguments, from :data:`_plans` when there.

    The scalar arguments are checked on every call (they are cheap); the
    kernel is looked up by its float64 bytes, and checked (finite numbers)
    only when it is new.
    """
    dtype = getattr(kernel, "dtype", None)
    if dtype is None:  # a list: its numbers' kind
        with contextlib.suppress(ValueError):  # ragged: as_kernel says so below
            dtype = np.asarray(kernel).dtype
    try:
        # (complex: not made real, which would drop the imaginary part with a warning)
        k = None if dtype is not None and dtype.kind == "c" else np.asarray(kernel, np.float64)
    except (TypeError, ValueError):
        k = None
    if k is None or k.ndim not in (2, 3) or k.size == 0:
        as_kernel(kernel)  # raises, as it would have first
    assert k is not None
    kbytes = k.tobytes()
    # The usual arguments (a string padding and mode, a plain number cval, int
    # stride and dilation) are a key as they are: the plan was built, so checked,
    # from exactly these. (repr: -0.0 is not 0.0, nor True 1.)
    plain = (type(padding) is str and type(pad_mode) is str and type(stride) is int
             and type(dilation) is int and type(cval) in (int, float))
    if plain:
        quick = (k.shape, kbytes, img.shape, working_dtype(img.dtype), padding, pad_mode,
                 repr(cval), stride, dilation, flip)
        found = _plans.get(quick)
        if found is not None:
            return found
    mode, fill = normalize_pad_mode(pad_mode, cval)
    strides = normalize_pair(stride, "stride")
    dilations = normalize_pair(dilation, "dilation")
    pads = resolve_padding(padding, (k.shape[0], k.shape[1]), dilations)
    # (fill.hex(): a cval of -0.0 is not 0.0's plan)
    key = (k.shape, kbytes, img.shape, working_dtype(img.dtype), mode, fill.hex(),
           strides, dilations, pads, flip, padding == "same")
    found = _plans.get(key)
    if found is None:
        found = _new_plan(img, k, padding, mode, fill, strides, dilations, flip)
        _keep(key, found)
    if plain:
        _keep(quick, found)
    return found


def _keep(key: tuple[Any, ...], plan: _Plan) -> None:
    """Add ``plan`` to :data:`_plans`, dropping the oldest entry when it is full."""
    while _plans and len(_plans) >= PLANS_MAX:
        # (another thread may have dropped it, or be changing the dict, first)
        with contextlib.suppress(KeyError, RuntimeError, StopIteration):
            del _plans[next(iter(_plans))]
    _plans[key] = plan


def _new_plan(
    img: NDArray[Any], kernel: ArrayLike, padding: object, mode: str, fill: float,
    strides: tuple[int, int], dilations: tuple[int, int], flip: bool,
) -> _Plan:
    weights = as_kernel(kernel)
    if weights.ndim == 3:
        channels = img.shape[2] if img.ndim == 3 else 1
        if img.ndim != 3 or channels != weights.shape[2]:
            raise ValueError(
                f"a multi-channel filter of shape {weights.shape} needs an image with "
                f"{weights.shape[2]} channels, got image shape {img.shape}"
            )
    kshape = (weights.shape[0], weights.shape[1])
    pads = resolve_padding(padding, kshape, dilations)
    if flip:
        weights = weights[::-1, ::-1]
        if padding == "same":
            # true convolution mirrors the anchor, as scipy.ndimage.convolve does
            pads = (pads[1], pads[0], pads[3], pads[2])
    geom = Geometry((img.shape[0], img.shape[1]), kshape, pads, strides, dilations)
    geom.check()
    return _Plan(weights.astype(working_dtype(img.dtype)), geom, mode, fill)


def _prepare(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    padding: object,
    pad_mode: object,
    cval: object,
    stride: object,
    dilation: object,
    flip: bool,
) -> tuple[NDArray[Any], NDArray[Any], Geometry, str, float]:
    """Validate the arguments: the image, the kernel in the working dtype (read-only), geometry."""
    img = as_image(image)
    plan = _plan(img, kernel, padding=padding, pad_mode=pad_mode, cval=cval, stride=stride,
                 dilation=dilation, flip=flip)
    return img, plan.weights, plan.geom, plan.mode, plan.fill


def _strategy(
    name: str | None, weights: NDArray[Any], geom: Geometry, image_dtype: np.dtype[Any],
    mode: str, fill: float, in_place: bool = False,
) -> tuple[Strategy, NDArray[Any]]:
    """The strategy to run and the weights to run it with (int16 where that is exact).

    ``in_place``: the planes are in the working dtype with contiguous rows
    (:func:`~imgconv.core.strategies.readable_in_place`).
    """
    chosen = name or choose_strategy(weights, geom, in_place=in_place)
    if chosen not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {chosen!r}")
    # the fill value is read only with constant borders
    exact = exact_int16(weights, chosen, image_dtype, fill if mode == "constant" else 0.0)
    return STRATEGIES[chosen], weights if exact is None else exact


def _run(
    img: NDArray[Any],
    plan: _Plan,
    strategy: str | None,
    out: NDArray[Any] | None = None,
    post: Post | None = None,
) -> NDArray[Any]:
    """Run the strategy per channel; planes are passed as views and converted tile by tile.

    ``weights`` are in the working dtype, which is also the result's; a strategy
    may compute in int16 (:func:`imgconv.core.strategies.exact_int16`), storing
    into the float result or ``out``.
    """
    weights, geom, mode, fill = plan.weights, plan.geom, plan.mode, plan.fill
    if weights.ndim == 3:
        # the channel sums need the working dtype: post-processing comes after
        total = np.empty(geom.out_shape, dtype=weights.dtype)
        part = np.empty_like(total)
        for c in range(img.shape[2]):
            run, w = _strategy(strategy, weights[:, :, c], geom, img.dtype, mode, fill)
            run(img[:, :, c], w, geom, mode, fill, out=total if c == 0 else part)
            if c:
                total += part
        if post is not None:
            post(total)
        if out is None:
            return total
        np.copyto(out, total, casting="unsafe")
        return out
    channels = () if img.ndim == 2 else (img.shape[2],)
    result = np.empty((*geom.out_shape, *channels), weights.dtype) if out is None else out
    run, w = plan.strategy(strategy, img if img.ndim == 2 else img[:, :, 0])
    if img.ndim == 2:
        return run(img, w, geom, mode, fill, out=result, post=post)
    for c in range(img.shape[2]):
        run(img[:, :, c], w, geom, mode, fill, out=result[:, :, c], post=post)
    return result


def _correlate(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    padding: object,
    pad_mode: object,
    cval: object,
    stride: object,
    dilation: object,
    flip: bool,
    strategy: str | None = None,
) -> NDArray[Any]:
    """The one worker behind :func:`correlate` and :func:`convolve`.

    ``strategy`` names one of :data:`imgconv.core.strategies.STRATEGIES`
    (``None``: the cost model's choice); tests use it to check each one.
    """
    img = as_image(image)
    plan = _plan(img, kernel, padding=padding, pad_mode=pad_mode, cval=cval, stride=stride,
                 dilation=dilation, flip=flip)
    return _run(img, plan, strategy)


def output_shape(
    image_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    *,
    padding: Padding = "same",
    stride: IntPair = 1,
    dilation: IntPair = 1,
) -> tuple[int, ...]:
    """The shape :func:`correlate` returns, without computing anything.

    >>> output_shape((480, 640, 3), (3, 3), stride=2)
    (240, 320, 3)
    >>> output_shape((480, 640, 3), (3, 3, 3), padding="valid")
    (478, 638)
    """
    if len(image_shape) not in (2, 3) or len(kernel_shape) not in (2, 3):
        raise ValueError(
            f"image shape must be (H, W) or (H, W, C) and kernel shape (kh, kw) or (kh, kw, C); "
            f"got {image_shape} and {kernel_shape}"
        )
    dilations = normalize_pair(dilation, "dilation")
    kshape = (kernel_shape[0], kernel_shape[1])
    geom = Geometry((image_shape[0], image_shape[1]), kshape,
                    resolve_padding(padding, kshape, dilations),
                    normalize_pair(stride, "stride"), dilations)
    geom.check()
    if len(image_shape) == 3 and len(kernel_shape) == 2:
        return (*geom.out_shape, image_shape[2])
    return geom.out_shape


def correlate_into(
    image: ArrayLike,
    kernel: ArrayLike,
    out: NDArray[Any],
    *,
    padding: Padding = "same",
    pad_mode: str = "reflect",
    cval: float = 0.0,
    stride: IntPair = 1,
    dilation: IntPair = 1,
    flip: bool = False,
    post: Post | None = None,
) -> NDArray[Any]:
    """Correlate (``flip=True``: convolve) into ``out``, finishing each tile with ``post``.

    The memory-lean entry point for whole images: integer input is converted to
    float32 tile by tile, each finished float tile is passed to ``post`` (which
    may change it in place, e.g. clip to 0..255) and then stored into ``out``,
    which may have any real dtype (e.g. uint8: a C cast, so ``post`` should
    round and clip first). Peak memory is the input, ``out`` and a few tiles
    per thread. A multi-channel filter is the exception: its channel sum is one
    float plane, processed by ``post`` as a whole.

    Parameters
    ----------
    image, kernel, padding, pad_mode, cval, stride, dilation
        As :func:`correlate`.
    out : ndarray
        Of shape :func:`output_shape`; written and returned. It may be
        ``image`` itself (or overlap it): the image is then read from a copy,
        of one channel at a time when each channel of ``out`` lies exactly
        where that channel of the image does (per-channel kernels, the same
        shape and strides), else of the whole image. Until the call returns
        it may hold partial sums (without ``post``, the passes add up in
        place).
    flip : bool
        True convolution, as :func:`convolve`.
    post : callable, optional
        ``post(tile)`` on each float tile of output rows (shape (rows, W') per
        channel), in place; its return value is ignored. A ``post`` with a
        true attribute ``takes_int16`` also gets the int16 tiles of exact
        sums (8-bit images, small whole-number kernels) as they are, rather
        than converted to float32 (whole numbers either way).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    >>> out = np.empty((2, 2), np.uint8)
    >>> correlate_into(x, [[-1.0, 1.0]], out, post=lambda t: np.clip(t, 0, 255, out=t))
    array([[ 0, 10],
           [ 0, 10]], dtype=uint8)
    """
    img = as_image(image)
    plan = _plan(img, kernel, padding=padding, pad_mode=pad_mode, cval=cval, stride=stride,
                 dilation=dilation, flip=flip)
    geom = plan.geom
    per_channel = img.ndim == 3 and plan.weights.ndim == 2
    expected = (*geom.out_shape, img.shape[2]) if per_channel else geom.out_shape
    if not isinstance(out, np.ndarray) or out.shape != expected:
        got = out.shape if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(f"out must be an array of shape {expected}, got {got}")
    if np.may_share_memory(img, out):  # tiles are written while later ones still read
        if per_channel and _same_places(img, out):
            plane = np.empty(img.shape[:2], img.dtype)  # one buffer for every channel
            for c in range(img.shape[2]):  # channel c is read whole before it is written
                _copy_parallel(plane, img[:, :, c])
                _run(plane, plan, None, out=out[:, :, c], post=post)
            return out
        img = img.copy()
    return _run(img, plan, None, out=out, post=post)


def _copy_parallel(dst: NDArray[Any], src: NDArray[Any]) -> None:
    """``np.copyto(dst, src)`` in bands of rows on the thread pool (a strided gather is slow)."""
    threads = get_threads()
    if threads <= 1 or dst.size < PARALLEL_MIN_PIXELS:
        np.copyto(dst, src)
        return
    rows = dst.shape[0]
    step = -(-rows // threads)
    run_parallel(lambda r0: np.copyto(dst[r0 : r0 + step], src[r0 : r0 + step]),
                 range(0, rows, step), threads)


def _same_places(a: NDArray[Any], b: NDArray[Any]) -> bool:
    """Whether ``a`` and ``b`` are the same elements of memory, in the same layout."""
    return (a.shape == b.shape and a.strides == b.strides and a.dtype.itemsize == b.dtype.itemsize
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def correlate(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    padding: Padding = "same",
    pad_mode: str = "reflect",
    cval: float = 0.0,
    stride: IntPair = 1,
    dilation: IntPair = 1,
) -> NDArray[Any]:
    """Cross-correlate an image with a kernel (what CNN code calls convolution).

    Parameters
    ----------
    image : array_like, shape (H, W) or (H, W, C)
        Any real dtype.
    kernel : array_like, shape (kh, kw) or (kh, kw, C)
        A 2-D kernel is applied to each channel independently. A 3-D kernel is a
        multi-channel filter: channel ``c`` is correlated with ``kernel[:, :, c]``
        and the responses are summed into one (H', W') map.
    padding : {"same", "valid", "full"}, int, (py, px) or (top, bottom, left, right)
        ``"same"`` centres the kernel on ``k // 2`` as scipy.ndimage does.
    pad_mode : {"reflect", "mirror", "nearest", "wrap", "constant"}
        scipy.ndimage's border modes; aliases ``zero``, ``edge``, ``symmetric``.
    cval : float
        The fill value for ``pad_mode="constant"``.
    stride, dilation : int or (y, x)
        Each ``>= 1``.

    Returns
    -------
    ndarray
        float64 for float64 input, float32 otherwise, of shape
        ``floor((n + p_before + p_after - e) / s) + 1`` per axis, ``e = d*(k-1) + 1``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> correlate(x, [[0, 0, 1]], padding="valid")
    array([[ 2.,  3.],
           [ 6.,  7.],
           [10., 11.],
           [14., 15.]])
    >>> correlate(x, np.ones((2, 2)), stride=2).shape
    (2, 2)
    """
    return _correlate(
        image, kernel, padding=padding, pad_mode=pad_mode, cval=cval,
        stride=stride, dilation=dilation, flip=False,
    )


def convolve(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    padding: Padding = "same",
    pad_mode: str = "reflect",
    cval: float = 0.0,
    stride: IntPair = 1,
    dilation: IntPair = 1,
) -> NDArray[Any]:
    """True convolution: correlation with the kernel flipped in both axes.

    Takes the same arguments as :func:`correlate`. With ``padding="same"`` the
    anchor is mirrored too, so the result equals ``scipy.ndimage.convolve`` in
    every mode, even-sized kernels included; with explicit padding it is
    ``correlate(image, kernel[::-1, ::-1], ...)``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> convolve(x, [[0, 0, 1]], padding="valid")
    array([[ 0.,  1.],
           [ 4.,  5.],
           [ 8.,  9.],
           [12., 13.]])
    """
    return _correlate(
        image, kernel, padding=padding, pad_mode=pad_mode, cval=cval,
        stride=stride, dilation=dilation, flip=True,
    )


def correlate_with(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    padding: Padding = "same",
    pad_mode: str = "reflect",
    cval: float = 0.0,
    stride: IntPair = 1,
    dilation: IntPair = 1,
    flip: bool = False,
    strategy: str | None = None,
) -> NDArray[Any]:
    """:func:`correlate` (``flip=True``: :func:`convolve`) by the strategy named.

    ``strategy`` is one of :data:`imgconv.core.strategies.STRATEGIES`, or None
    for the cost model's choice: what :func:`strategy_for` says for the whole
    image, given to a band of it, makes the band compute as the whole would.
    """
    return _correlate(image, kernel, padding=padding, pad_mode=pad_mode, cval=cval,
                      stride=stride, dilation=dilation, flip=flip, strategy=strategy)


def strategy_for(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    padding: Padding = "same",
    pad_mode: str = "reflect",
    cval: float = 0.0,
    stride: IntPair = 1,
    dilation: IntPair = 1,
    flip: bool = False,
) -> str:
    """The strategy :func:`correlate_with` would choose; raises as it would.

    >>> import numpy as np
    >>> strategy_for(np.zeros((64, 64), np.float32), np.ones((3, 3))) in STRATEGIES
    True
    """
    img, weights, geom, _, _ = _prepare(image, kernel, padding=padding, pad_mode=pad_mode,
                                        cval=cval, stride=stride, dilation=dilation, flip=flip)
    if weights.ndim == 3:
        return choose_strategy(weights[:, :, 0], geom)
    plane = img if img.ndim == 2 else img[:, :, 0]
    return choose_strategy(weights, geom, in_place=readable_in_place(plane, weights.dtype))
