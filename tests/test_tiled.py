"""imgconv.tiled: block-by-block results equal the in-memory ones, whatever the chunks (issue 16).

The oracle is the in-memory path (itself checked against scipy.ndimage and
PyTorch elsewhere); the chunks here are tiny, smaller than the halos, and
not multiples of the strides, so every block edge is crossed.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

da = pytest.importorskip("dask.array", reason="needs the scale extra")

import imgconv  # noqa: E402
import imgconv.tiled  # noqa: E402
from imgconv.core.padding import PAD_MODES, map_positions  # noqa: E402
from imgconv.kernels.model import Kernel, KernelBank  # noqa: E402
from imgconv.pipeline import Pipeline  # noqa: E402
from imgconv.pipeline.stages import ActivationStage, ConvStage, PoolStage  # noqa: E402
from imgconv.tiled.windows import Windows, blocks  # noqa: E402

NUMPY_PAD = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap"}
bounded = settings(max_examples=25, deadline=None)


def chunked(x: np.ndarray, rows: int, cols: int | None = None) -> da.Array:
    return da.from_array(x, chunks=(rows, cols or rows, *x.shape[2:]))


def distinct(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Taps that are all different, so a misplaced one shows."""
    return np.random.default_rng(seed).permutation(np.prod(shape)).reshape(shape) + 1.0


@given(n=st.integers(1, 9), before=st.integers(0, 25), after=st.integers(0, 25),
       mode=st.sampled_from(sorted(NUMPY_PAD)))
@bounded
def test_positions_map_as_numpy_pads(n, before, after, mode):
    expected = np.pad(np.arange(n), (before, after), mode=NUMPY_PAD[mode])
    if mode == "mirror" and n == 1:
        expected = np.zeros(before + n + after, int)  # numpy refuses; every place is pixel 0
    assert map_positions(np.arange(-before, n + after), n, mode).tolist() == expected.tolist()


def test_wrap_across_chunks_by_hand():
    x = np.arange(12.0).reshape(3, 4)  # rows 0..3, 4..7, 8..11
    kernel = [[1.0, 10.0, 100.0]]  # out[i, j] = x[i, j-1] + 10 x[i, j] + 100 x[i, j+1]
    out = imgconv.tiled.correlate(chunked(x, 1), kernel, pad_mode="wrap").compute()
    assert out[0].tolist() == [3 + 0 + 100, 0 + 10 + 200, 1 + 20 + 300, 2 + 30 + 0]
    assert out[2, 0] == 11 + 80 + 900


def test_blocks_leave_a_one_pixel_last_block():
    assert blocks(9, 4) == [(0, 4), (4, 8), (8, 9)]
    assert Windows(10, 1, 3, 2, 5).positions(1, 3).tolist() == [1, 2, 3, 4, 5]


@given(h=st.integers(1, 14), w=st.integers(1, 14), kh=st.integers(1, 4), kw=st.integers(1, 4),
       mode=st.sampled_from(PAD_MODES), padding=st.sampled_from(["same", "valid", "full", 3,
                                                                 (0, 2, 5, 1)]),
       stride=st.sampled_from([1, 2, (3, 1)]), dilation=st.sampled_from([1, 2, (1, 3)]),
       chunk=st.integers(1, 6), channels=st.sampled_from([None, 3]), flip=st.booleans(),
       seed=st.integers(0, 99))
@bounded
def test_correlate_and_convolve_equal_in_memory(h, w, kh, kw, mode, padding, stride, dilation,
                                                chunk, channels, flip, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((h, w) if channels is None else (h, w, channels))
    kernel = distinct((kh, kw), seed)
    fn, lazy = ((imgconv.convolve, imgconv.tiled.convolve) if flip
                else (imgconv.correlate, imgconv.tiled.correlate))
    args = dict(padding=padding, pad_mode=mode, cval=-1.5, stride=stride, dilation=dilation)
    try:
        expected = fn(x, kernel, **args)
    except ValueError as exc:
        with pytest.raises(ValueError, match="empty"):
            lazy(chunked(x, chunk), kernel, **args)
        assert "empty" in str(exc)
        return
    actual = lazy(chunked(x, chunk, chunk + 1), kernel, **args)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual.compute(), expected, rtol=1e-12, atol=1e-9)


@given(h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 4), kw=st.integers(1, 4),
       op=st.sampled_from(["max", "avg"]), stride=st.sampled_from([None, 1, 2, (3, 2)]),
       pad=st.integers(0, 2), dilation=st.sampled_from([1, 2]), ceil_mode=st.booleans(),
       include=st.booleans(), chunk=st.integers(1, 5), seed=st.integers(0, 99))
@bounded
def test_pool_equals_in_memory(h, w, kh, kw, op, stride, pad, dilation, ceil_mode, include,
                               chunk, seed):
    x = np.random.default_rng(seed).standard_normal((h, w, 2))
    args = dict(stride=stride, op=op, padding=(min(pad, kh // 2), min(pad, kw // 2)),
                dilation=dilation if op == "max" else 1, ceil_mode=ceil_mode,
                count_include_pad=include)
    try:
        expected = imgconv.pool(x, (kh, kw), **args)
    except ValueError:
        with pytest.raises(ValueError):
            imgconv.tiled.pool(chunked(x, chunk), (kh, kw), **args)
        return
    actual = imgconv.tiled.pool(chunked(x, chunk), (kh, kw), **args).compute()
    assert np.array_equal(actual, expected)  # the same sums in the same order


def test_activate_block_by_block():
    x = np.linspace(-3, 3, 35).reshape(5, 7)
    assert np.array_equal(imgconv.tiled.activate(chunked(x, 2), "relu").compute(),
                          imgconv.activate(x, "relu"))
    with pytest.raises(ValueError, match="activation"):
        imgconv.tiled.activate(chunked(x, 2), "tanh")


def _bank(combine: str, sizes: list[int]) -> ConvStage:
    members = tuple(Kernel(f"k{i}", distinct((s, s), i)) for i, s in enumerate(sizes))
    # a bank's members share a shape; different anchors pad them differently
    anchors = [None, (0, 0), (sizes[0] - 1, 0)]
    members = tuple(Kernel(k.name, k.matrix, anchor=a)
                    for k, a in zip(members, anchors, strict=True))
    return ConvStage("bank", pad_mode="wrap", kernel=KernelBank("bank", members, combine))


@pytest.mark.parametrize("pipeline", [
    pytest.param(Pipeline.from_options(["sobel-x", "gaussian:sigma=2", "box:5"],
                                       pad_mode="mirror", stride=2), id="halos-add-up"),
    pytest.param(Pipeline.from_options(["laplacian"], activation="relu", pool="max",
                                       pool_size=3, pool_stride=2, pool_padding=1,
                                       pool_ceil=True), id="conv-relu-pool"),
    pytest.param(Pipeline((_bank("magnitude", [3, 3, 3]),)), id="bank-anchors"),
    pytest.param(Pipeline((_bank("stack", [3, 3, 3]), ActivationStage("abs"),
                           PoolStage("avg", (2, 2))), pick=1), id="stack-pick"),
    pytest.param(Pipeline.from_options(["emboss"], pad_mode="constant", cval=7.5, dilation=2),
                 id="constant-dilated"),
])
@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_pipelines_equal_in_memory(pipeline, chunk):
    x = np.random.default_rng(chunk).integers(0, 256, (19, 23), dtype=np.uint8)
    if not pipeline.conv_stages[0].stacks:
        x = np.dstack([x, x[::-1], 255 - x])
    expected = pipeline.run(x)
    actual = pipeline.run(chunked(x, chunk))
    assert isinstance(actual, da.Array)
    np.testing.assert_allclose(actual.compute(), expected,
                               atol=1e-6 * max(1.0, float(np.abs(expected).max())))


def test_layer_of_multichannel_filters_equals_conv2d():
    from imgconv.kernels.weights import from_array, with_bias

    weights = distinct((4, 3, 3, 3))  # (C_out, C_in, kh, kw), as PyTorch holds them
    bias = (0.5, -1.0, 2.0, 0.0)
    x = np.random.default_rng(3).standard_normal((11, 13, 3))
    expected = imgconv.conv2d(x, weights, bias, padding=1, stride=2, pad_mode="constant")
    stage = ConvStage("layer", padding=1, stride=(2, 2), pad_mode="constant",
                      kernel=with_bias(from_array(weights, "layer"), bias))
    actual = Pipeline((stage,)).run(chunked(x, 2)).compute()
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-9)


def test_errors_are_the_in_memory_ones():
    x = chunked(np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="empty"):
        imgconv.tiled.correlate(x, np.ones((7, 7)), padding="valid")
    with pytest.raises(ValueError, match="pool size"):
        imgconv.tiled.pool(x, 5)
    with pytest.raises(TypeError, match="real numbers"):
        imgconv.tiled.correlate(x, [[1j]])
    with pytest.raises(ValueError, match="2-D"):
        imgconv.tiled.correlate(chunked(np.zeros((2, 2, 2, 2)), 1), [[1.0]])
