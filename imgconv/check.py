"""The independent reference: a pipeline computed with scipy.ndimage, and the comparison.

Every padding, "same" included, is done with ``numpy.pad`` first, and only the
valid part of scipy's result is kept: scipy's own reflecting borders read
outside its buffer when a kernel is much larger than the image (a 31x31 box on
a 2x3 image gave NaN or 1e178), and its "constant" mode over an already padded
array never takes that path. Dilation spreads the kernel's taps
with zeros, stride takes every s-th output; activation and pooling are plain
numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.pipeline import ActivationStage, ConvStage, Pipeline, PoolStage

# scipy.ndimage mode -> numpy.pad mode
_NUMPY_PAD = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap",
              "constant": "constant"}


def _dilate(weights: NDArray[Any], dilation: tuple[int, int]) -> NDArray[Any]:
    dy, dx = dilation
    kh, kw = weights.shape[:2]
    spread = np.zeros(((kh - 1) * dy + 1, (kw - 1) * dx + 1, *weights.shape[2:]))
    spread[::dy, ::dx] = weights
    return spread


def _correlate_plane(
    plane: NDArray[Any], weights: NDArray[Any], stage: ConvStage, kernel: Any
) -> NDArray[Any]:
    from scipy import ndimage

    w = _dilate(np.asarray(weights, dtype=np.float64), stage.dilation)
    if stage.mode == "convolve":
        w = w[::-1, ::-1]
    top, bottom, left, right = stage.pads(kernel)
    padded = np.pad(plane.astype(np.float64), ((top, bottom), (left, right)),
                    mode=_NUMPY_PAD[stage.pad_mode],  # type: ignore[call-overload]
                    **({"constant_values": stage.cval} if stage.pad_mode == "constant" else {}))
    full = ndimage.correlate(padded, w, mode="constant", cval=0.0)
    eh, ew = w.shape
    # scipy centres the kernel at k // 2: the valid part starts there
    valid = full[eh // 2 : padded.shape[0] - (eh - 1 - eh // 2),
                 ew // 2 : padded.shape[1] - (ew - 1 - ew // 2)]
    out: NDArray[Any] = valid[:: stage.stride[0], :: stage.stride[1]]
    return out


def _reference_kernel(x: NDArray[Any], stage: ConvStage, kernel: Any) -> NDArray[Any]:
    weights = np.asarray(kernel.weights, dtype=np.float64)
    if weights.ndim == 3:
        out = sum(_correlate_plane(x[:, :, c], weights[:, :, c], stage, kernel)
                  for c in range(weights.shape[2]))
    elif x.ndim == 2:
        out = _correlate_plane(x, weights, stage, kernel)
    else:
        out = np.stack([_correlate_plane(x[:, :, c], weights, stage, kernel)
                        for c in range(x.shape[2])], axis=-1)
    result: NDArray[Any] = np.asarray(out) + kernel.bias
    return result


def _reference_pool(x: NDArray[Any], stage: PoolStage) -> NDArray[Any]:
    """Pooling as PyTorch defines it: the padding and what ``ceil_mode`` windows reach past
    it are NaN, which nanmax and nansum skip; avg's counted padding is 0 instead."""
    (kh, kw), (sy, sx) = stage.size, stage.stride or stage.size
    (py, px), (dy, dx) = stage.padding, stage.dilation

    def count(n: int, k: int, s: int, p: int, d: int) -> int:
        span = n + 2 * p - d * (k - 1) - 1
        out = (-(-span // s) if stage.ceil_mode else span // s) + 1
        return out - 1 if stage.ceil_mode and (out - 1) * s >= n + p else out

    oh, ow = count(x.shape[0], kh, sy, py, dy), count(x.shape[1], kw, sx, px, dx)
    rest = [(0, 0)] * (x.ndim - 2)
    counted = stage.op == "avg" and stage.count_include_pad
    x = np.pad(x.astype(np.float64), [(py, py), (px, px), *rest],
               constant_values=0.0 if counted else np.nan)
    extra_h = max(0, (oh - 1) * sy + dy * (kh - 1) + 1 - x.shape[0])
    extra_w = max(0, (ow - 1) * sx + dx * (kw - 1) + 1 - x.shape[1])
    x = np.pad(x, [(0, extra_h), (0, extra_w), *rest], constant_values=np.nan)
    windows = np.stack([x[i * dy : i * dy + sy * (oh - 1) + 1 : sy,
                          j * dx : j * dx + sx * (ow - 1) + 1 : sx]
                        for i in range(kh) for j in range(kw)])
    seen = ~np.isnan(windows)
    if stage.op == "max":
        out: NDArray[Any] = np.where(seen, windows, -np.inf).max(axis=0)
    else:
        out = np.where(seen, windows, 0.0).sum(axis=0) / seen.sum(axis=0)
    return out


def reference(pipeline: Pipeline, image: NDArray[Any]) -> NDArray[Any]:
    """Run ``pipeline`` on ``image`` with scipy.ndimage, in float64."""
    from imgconv.kernels import combine

    x = np.asarray(image, dtype=np.float64)
    for stage in pipeline.stages:
        if isinstance(stage, ConvStage):
            responses = [_reference_kernel(x, stage, k) for k in stage.members()]
            bank = stage.bank
            x = np.asarray(combine(responses, bank.combine)) if bank else responses[0]
        elif isinstance(stage, ActivationStage):
            if stage.kind == "relu":
                x = np.maximum(x, 0.0)
            elif stage.kind == "abs":
                x = np.abs(x)
        else:
            x = _reference_pool(x, stage)
    return x


@dataclass(frozen=True)
class Comparison:
    """Per-channel errors of a result against the reference."""

    max_abs: tuple[float, ...]
    mean_abs: tuple[float, ...]
    tolerance: float

    @property
    def ok(self) -> bool:
        return max(self.max_abs) <= self.tolerance


def default_tolerance(reference_result: NDArray[Any]) -> float:
    """1e-4 x max(1, the largest |value| of the result)."""
    return 1e-4 * max(1.0, float(np.abs(reference_result).max()))


def compare(ours: NDArray[Any], theirs: NDArray[Any], tol: float | None = None) -> Comparison:
    """Max and mean absolute error per channel; shapes must agree."""
    if ours.shape != theirs.shape:
        raise ValueError(f"shapes differ: imgconv {ours.shape}, scipy {theirs.shape}")
    diff = np.abs(ours.astype(np.float64) - theirs)
    if diff.ndim == 2:
        diff = diff[:, :, None]
    return Comparison(
        tuple(float(diff[:, :, c].max()) for c in range(diff.shape[2])),
        tuple(float(diff[:, :, c].mean()) for c in range(diff.shape[2])),
        default_tolerance(theirs) if tol is None else tol,
    )
