"""The pipeline: stages run in order on an image, then an output map.

Built from a layer's settings (:meth:`Pipeline.from_options`) or from a YAML
file (:meth:`Pipeline.from_yaml`); both build the same object. Running it
keeps every intermediate result in floating point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from numpy.typing import NDArray

from imgconv.errors import ImageError
from imgconv.pipeline import spec
from imgconv.pipeline.layer import OUTPUT_MAPPINGS, build_stages, channel_problem, choice
from imgconv.pipeline.mapping import (
    int16_mappable,
    map_int16_tile,
    map_output,
    map_tile,
    out_dtype,
)
from imgconv.pipeline.options import LayerOptions
from imgconv.pipeline.stages import ActivationStage, ConvStage, PoolStage, Stage

if TYPE_CHECKING:
    import dask.array as da

#: ``allocate(shape, dtype)``: makes an output array, as ``np.empty`` does
Allocate = Callable[[tuple[int, ...], Any], NDArray[Any]]

#: Convolution rows per band when a pooling stage follows (:meth:`Pipeline.run`):
#: 8 MiB of float32 response at a time for a 4000-pixel-wide image.
BAND_ROWS = 512


@dataclass(frozen=True)
class Pipeline:
    """Stages run in order, then ``output`` maps the float result to image values."""

    stages: tuple[Stage, ...]
    output: str = "auto"
    #: keep only this map (channel) of the result: one output file per map
    pick: int | None = None

    @property
    def conv_stages(self) -> tuple[ConvStage, ...]:
        return tuple(s for s in self.stages if isinstance(s, ConvStage))

    @property
    def name(self) -> str:
        """The kernel specs joined by '+', for output file names."""
        return "+".join(s.spec for s in self.conv_stages)

    @overload
    def run(self, x: NDArray[Any]) -> NDArray[Any]: ...

    @overload
    def run(self, x: da.Array) -> da.Array: ...

    def run(self, x: Any) -> Any:
        """Run every stage on an (H, W) or (H, W, C) array; returns float32 or float64.

        A dask array gives a dask array, computed block by block when asked
        (:mod:`imgconv.tiled`, the ``scale`` extra).

        Every stage returns a new array, so an activation after the first stage
        works in place on its input, which no one else holds. A convolution
        followed by pooling (with activations between) runs in bands of rows
        (:meth:`_pooled_in_bands`), so that its full-size response is never
        held whole.
        """
        self.check_channels(x)
        if is_dask(x):
            from imgconv.tiled.ops import run_stage

            for stage in self.stages:
                x = run_stage(stage, x)
            return self._picked(x)
        stages = self.stages
        banded = self._pooled_in_bands(x)
        if banded is not None:
            x, stages = banded
        for i, stage in enumerate(stages):
            if isinstance(stage, ActivationStage) and (i or banded is not None):
                x = stage.run(x, in_place=True)
            else:
                x = stage.run(x)
        return self._picked(x)

    def _picked(self, x: Any) -> Any:
        """The result, or its one map ``pick``."""
        if self.pick is None:
            return x
        if x.ndim != 3 or self.pick >= x.shape[2]:
            count = x.shape[2] if x.ndim == 3 else 1
            raise ImageError(f"the result has {count} map(s), no map {self.pick}")
        picked = x[:, :, self.pick]
        return picked if is_dask(picked) else np.ascontiguousarray(picked)

    def _pooled_in_bands(self, x: NDArray[Any]) -> tuple[NDArray[Any], tuple[Stage, ...]] | None:
        """Run conv -> activations -> pool in bands of pooled rows; the result and the rest.

        Each band computes only the convolution rows its pooling windows read
        (:meth:`ConvStage.run`'s ``rows``), so a 12 MP float32 response (46 MiB
        a channel) is held a band at a time. Each band takes the strategy the
        whole image would, so the sums are the same: to the bit for the direct
        sum, and within float rounding where FFT blocks or BLAS products (long
        separable filters) follow the band. Returns None, for stage by stage,
        when the pipeline does not start that way, the image is small, it would
        fail (so errors name the image, not a band), or its border mode reaches
        beyond a band (wrap, or a band smaller than the padding it reflects).
        """
        conv, *rest = self.stages
        acts: list[ActivationStage] = []
        while rest and isinstance(rest[0], ActivationStage):
            acts.append(rest[0])
            rest = rest[1:]
        if not (isinstance(conv, ConvStage) and rest and isinstance(rest[0], PoolStage)):
            return None
        pool, after = rest[0], rest[1:]
        if not pool.plain:  # padded or ceil_mode windows reach past a band's own rows
            return None
        height = x.shape[0]
        try:  # whatever would fail fails stage by stage, naming the whole image
            strategies = [conv.strategy_for(x, kernel) for kernel in conv.members()]
            out_h, out_w = conv.out_shape(x.shape[:2])
        except ValueError:
            return None
        (ph, pw), (psy, _) = pool.size, pool.stride or pool.size
        if ph > out_h or pw > out_w:
            return None
        pooled = (out_h - ph) // psy + 1
        per_band = max(1, BAND_ROWS // psy)
        if conv.pad_mode == "wrap" or pooled <= per_band:
            return None
        bands = [(i0, min(pooled, i0 + per_band)) for i0 in range(0, pooled, per_band)]
        for i0, i1 in bands:
            for kernel in conv.members():
                (a, b), (top, bottom, _, _) = conv.band_of(kernel, height, i0 * psy,
                                                           (i1 - 1) * psy + ph)
                if b - a <= max(top, bottom) + 1:
                    return None
        result: NDArray[Any] | None = None
        for i0, i1 in bands:
            y = conv.run(x, rows=(i0 * psy, (i1 - 1) * psy + ph), strategies=strategies)
            for act in acts:
                y = act.run(y, in_place=True)
            part = pool.run(y)
            if result is None:
                result = np.empty((pooled, *part.shape[1:]), part.dtype)
            result[i0:i1] = part
        assert result is not None
        return result, tuple(after)

    def run_mapped(
        self, x: NDArray[Any], how: str, *, scale: float, out_max: int,
        allocate: Allocate = np.empty,
    ) -> tuple[NDArray[Any], float]:
        """Run and map to integers in ``[0, out_max]``: the result and the clipped fraction.

        ``allocate(shape, dtype)`` makes the output array for a per-value mapping
        (:func:`imgconv.imageio.output_array` lays it out for the encoder).

        One plain kernel, optionally followed by an activation, with a per-value
        mapping (clip, abs, offset) runs fused: integer input is read, filtered
        and mapped tile by tile straight into the integer output, so memory is
        the input, the output and a few tiles. Anything else runs stage by stage
        in floating point and is mapped at the end; both give the same values.
        """
        self.check_channels(x)
        conv, *rest = self.stages
        if not self.fuses(how):
            return self._run_mapped_by_channel(x, how, scale=scale, out_max=out_max,
                                               allocate=allocate)
        assert isinstance(conv, ConvStage)
        from imgconv.core.conv import correlate_into, output_shape

        kernel = conv.members()[0]
        padding = conv.padding_for(kernel)
        try:
            shape = output_shape(x.shape, kernel.weights.shape, padding=padding,
                                 stride=conv.stride, dilation=conv.dilation)
        except ValueError as exc:
            raise ImageError(f"kernel {kernel.name}: {exc}") from None
        out = allocate(shape, out_dtype(out_max))
        clipped: list[int] = []  # appended from the core's threads (list.append is atomic)
        activations = [s.kind for s in rest if isinstance(s, ActivationStage)]

        def post(tile: NDArray[Any]) -> None:
            if kernel.bias:
                tile += kernel.bias
            for kind in activations:
                if kind == "relu":
                    np.maximum(tile, 0, out=tile)
                elif kind == "abs":
                    np.abs(tile, out=tile)
            mapped = map_tile if tile.dtype.kind == "f" else map_int16_tile
            clipped.append(mapped(tile, how, scale=scale, out_max=out_max))

        # exact int16 sums (never -32768) map without floats when nothing adds a fraction
        post.takes_int16 = (  # type: ignore[attr-defined]
            not kernel.bias and int16_mappable(how, scale, out_max))

        try:
            correlate_into(x, kernel.weights, out, padding=padding, pad_mode=conv.pad_mode,
                           cval=conv.cval, stride=conv.stride, dilation=conv.dilation,
                           flip=conv.mode == "convolve", post=post)
        except ValueError as exc:
            raise ImageError(f"kernel {kernel.name}: {exc}") from None
        return out, sum(clipped) / max(out.size, 1)

    def fuses(self, how: str) -> bool:
        """Whether the stages and the output map ``how`` filter and map in one pass per tile
        (:meth:`run_mapped`): one plain kernel, then activations only, mapped value by value."""
        conv, *rest = self.stages
        return (self.pick is None and isinstance(conv, ConvStage) and conv.bank is None
                and all(isinstance(s, ActivationStage) for s in rest)
                and how in ("clip", "abs", "offset"))

    def _run_mapped_by_channel(
        self, x: NDArray[Any], how: str, *, scale: float, out_max: int, allocate: Allocate
    ) -> tuple[NDArray[Any], float]:
        """Run stage by stage, one colour channel at a time where channels are independent.

        Without a multi-channel filter every stage treats channels separately, so
        a bank's float responses exist for one channel at a time (a third of the
        memory for RGB). ``normalize`` needs every channel's range first, so it
        maps the whole result at once.
        """
        if x.ndim == 2 or self.mixes_channels or how == "normalize" or self.pick is not None:
            return map_output(self.run(x), how, scale=scale, out_max=out_max)
        out: NDArray[Any] | None = None
        clipped = 0
        for c in range(x.shape[2]):
            values = self.run(x[:, :, c])
            if values.dtype != np.float64:
                values = values.astype(np.float32, copy=False)
            clipped += map_tile(values, how, scale=scale, out_max=out_max)
            if out is None:
                out = allocate((*values.shape, x.shape[2]), out_dtype(out_max))
            out[:, :, c] = values
        assert out is not None
        return out, clipped / max(out.size, 1)

    @property
    def mixes_channels(self) -> bool:
        """Whether a stage reads several channels into one map (a (kh, kw, C_in) filter) or
        makes several maps of one (a stack): then channels are not filtered each alone."""
        return any(s.stacks or s.in_channels is not None for s in self.conv_stages)

    def check_channels(self, x: NDArray[Any] | da.Array) -> None:
        """Raise ImageError when the first filter's C_in is not the image's channel count."""
        if self.mixes_channels:
            problem = channel_problem(self.stages, x.shape[2] if x.ndim == 3 else 1)
            if problem is not None:
                raise ImageError(problem)

    def out_channels(self, channels: int) -> int:
        """The channels of the result for an input of ``channels`` (1 for a 2-D image)."""
        if self.pick is not None:
            return 1
        for stage in self.conv_stages:
            channels = stage.out_channels(channels)
        return channels

    def maps(self) -> int | None:
        """How many maps the result has whatever the image, or None: it keeps the image's
        channels (no stage mixes them)."""
        return self.out_channels(1) if self.mixes_channels else None

    def map_names(self) -> tuple[str, ...]:
        """The names of the result's maps, when the last channel-changing stage is a stack
        (its members' names; a layer's are ``0 .. C_out-1``); else empty."""
        for stage in reversed(self.conv_stages):
            if stage.stacks:
                return stage.map_names()
            if stage.in_channels is not None:
                return ()
        return ()

    def output_mapping(self) -> str:
        """The mapping to use: ``output``, or for ``auto`` the last kernel's preference."""
        if self.output != "auto":
            return self.output
        for stage in reversed(self.conv_stages):
            return stage.kernel.output or "clip"
        return "clip"

    def clipping_remedies(self, how: str) -> tuple[str, ...]:
        """The output maps that would keep what ``how`` clips, given the result's sign.

        Empty where clipping is expected: every kernel keeps brightness (its
        weights sum to 1, as sharpen's do), so what goes past black or white is
        the overshoot that such a filter makes. A result that cannot be negative
        (a gradient magnitude, after ReLU) is helped by ``normalize`` alone: abs
        changes nothing and offset clips more. A signed result (a derivative)
        shows its strength with ``abs`` and its sign with ``offset``.
        """
        if how == "normalize":
            return ()
        if all(abs(float(np.sum(k.weights)) + k.bias - 1) < 1e-6
               for s in self.conv_stages for k in s.members()):
            return ()
        lo, _ = self.value_range(0.0, 1.0)
        if lo >= 0 or how != "clip":
            return ("normalize",)
        return ("abs", "offset", "normalize")

    def all_weights_nonnegative(self) -> bool:
        return all(
            float(np.min(k.weights)) >= 0 for s in self.conv_stages for k in s.members()
        )

    def value_range(self, lo: float, hi: float) -> tuple[float, float]:
        """Bounds on the result for input values in [lo, hi]."""
        for stage in self.stages:
            lo, hi = stage.value_range(lo, hi)
        return lo, hi

    def shapes(self, shape: tuple[int, int]) -> list[tuple[int, int]]:
        """The (H, W) after each stage, by the output-size formula."""
        out = []
        for stage in self.stages:
            if not isinstance(stage, ActivationStage):
                shape = stage.out_shape(shape)
            out.append(shape)
        return out

    def size_problem(self, shape: tuple[int, int], max_pixels: int) -> str | None:
        """Why running on an image of ``shape`` would make an array too large, or None.

        Each stage's result may have at most ``max_pixels`` pixels and each
        convolution's padded input at most four times that (the padding is
        materialized), worked out by the output-size formula before anything
        is computed.
        """
        for n, stage in enumerate(self.stages, 1):
            if isinstance(stage, ActivationStage):
                continue
            if isinstance(stage, ConvStage):
                for kernel in stage.members():
                    top, bottom, left, right = stage.pads(kernel)
                    padded = (shape[0] + top + bottom, shape[1] + left + right)
                    if padded[0] * padded[1] > 4 * max_pixels:
                        return (f"stage {n} ({stage.spec}) would pad the image to "
                                f"{_pixels(padded)}, more than 4 x the limit of {max_pixels:,}")
            shape = stage.out_shape(shape)
            if shape[0] * shape[1] > max_pixels and min(shape) > 0:
                what = f"stage {n}" + (f" ({stage.spec})" if isinstance(stage, ConvStage) else "")
                return f"{what} would make {_pixels(shape)}, more than the limit of {max_pixels:,}"
        return None

    def to_dict(self) -> dict[str, Any]:
        """A plain description (for manifests and dry runs), as a pipeline YAML would say it."""
        stages: list[dict[str, Any]] = []
        for s in self.stages:
            if isinstance(s, ConvStage):
                padding = list(s.padding) if isinstance(s.padding, tuple) else s.padding
                stages.append({
                    "kernel": s.spec, "mode": s.mode, "padding": padding,
                    "pad_mode": s.pad_mode, "cval": s.cval, "stride": list(s.stride),
                    "dilation": list(s.dilation),
                })
            elif isinstance(s, ActivationStage):
                stages.append({"activation": s.kind})
            else:
                pool: dict[str, Any] = {"op": s.op, "size": list(s.size),
                                        "stride": list(s.stride or s.size)}
                if not s.plain or not s.count_include_pad:
                    pool.update(padding=list(s.padding), dilation=list(s.dilation),
                                ceil_mode=s.ceil_mode, count_include_pad=s.count_include_pad)
                stages.append({"pool": pool})
        return {"stages": stages, "output": self.output}

    @classmethod
    def from_options(cls, kernels: Sequence[str], layer: LayerOptions | None = None, *,
                     output: str = "auto", **settings: Any) -> Pipeline:
        """Each kernel a stage with the layer's settings, then the activation and pooling.

        ``settings`` are :class:`LayerOptions` fields, given as keywords
        instead of ``layer`` (or changing it)::

            Pipeline.from_options(["sobel-x"], activation="relu", pool="max", pool_size=2)
        """
        layer = dataclasses.replace(layer or LayerOptions(), **settings)
        return cls(build_stages(kernels, layer), choice(output, OUTPUT_MAPPINGS, "output_map"))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        """Build from a pipeline YAML file (see docs/cli.md, "Pipeline files")."""
        return cls(*spec.read(path))

    @classmethod
    def from_dict(cls, doc: object) -> Pipeline:
        """Build from a pipeline document, as a YAML file holds it."""
        return cls(*spec.parse(doc))


def is_dask(x: object) -> bool:
    """Whether ``x`` is a dask array (told without importing dask)."""
    return type(x).__module__.startswith("dask.")


def _pixels(shape: tuple[int, int]) -> str:
    """``3x4 = 12 pixels``; past a trillion pixels, the count alone, rounded."""
    count = shape[0] * shape[1]
    if count < 10**12:
        return f"{shape[0]}x{shape[1]} = {count:,} pixels"
    return f"about {float(count):.3g} pixels"
