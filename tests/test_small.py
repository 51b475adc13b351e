"""The ``small`` strategy and the per-call caches of issue 19.

``small`` runs tap programs over a whole padded plane (no tiles, no pool, no
matrix products). test_conv.py and test_strategies.py already run it with every
other registered strategy; here it is checked on its own against scipy.ndimage
and the loop reference, by hand on distinct taps, on both executors, across
its own paths (gathered whole, filled by the Padder, cut into bands), and the
caches that let a 28x28 call skip the validation and the cost model are
checked not to leak state between calls.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import correlate_loop, distinct_kernel
from scipy import ndimage as ndi
from test_conv import MODES, assert_matches, make_image, scipy_reference
from test_jit import assert_same_bits, both_paths
from test_strategies import NAMED, geometries, geometry, worker

import imgconv
from imgconv.core import conv, jit, strategies
from imgconv.core.strategies import choose_strategy, small_programs

# every test runs on both executors of the tap programs (conftest.executor)
pytestmark = pytest.mark.usefixtures("executor")

needs_numba = pytest.mark.skipif(not jit.installed(), reason="numba is not installed")
#: for a test that runs both paths itself (both_paths): once, not once per executor
once = pytest.mark.parametrize("executor", ["numpy"], indirect=True)


def test_hand_computed_distinct_taps():
    # taps 1, 2, 4, 8, 16, 32: each output's binary digits say which taps read the one 1
    image = np.array([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    kernel = np.array([[1.0, 2, 4], [8, 16, 32]])
    # "same" for a (2, 3) kernel centres it on (1, 1): one row above, one column each side.
    # reflect repeats the 1 at padded (-1, 0), (0, -1) and (-1, -1). Output (0, 0) reads
    # padded rows -1..0, columns -1..1: taps (0, 0), (0, 1), (1, 0), (1, 1) see a 1:
    # 1 + 2 + 8 + 16 = 27; output (0, 1): taps (0, 0) and (1, 0): 9; output (1, 0) reads
    # rows 0..1: taps (0, 0), (0, 1): 3; output (1, 1): tap (0, 0): 1.
    expected = np.array([[27.0, 9, 0, 0], [3, 1, 0, 0], [0, 0, 0, 0]])
    actual = worker(image, kernel, "small")
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(correlate_loop(image, kernel, (1, 0, 1, 1), mode="reflect"),
                                  expected)
    # true convolution flips the kernel and mirrors the anchor: scipy's convolve
    np.testing.assert_array_equal(worker(image, kernel, "small", flip=True),
                                  ndi.convolve(image, kernel, mode="reflect"))


def test_hand_computed_rank_one_kernel_takes_the_separable_passes():
    image = np.arange(12.0).reshape(3, 4)
    kernel = np.outer([1.0, 2.0], [1.0, 4.0, 16.0])  # rank 1: column pass, then row pass
    assert len(small_programs(kernel.astype(np.float64), (1, 1))) == 2
    actual = worker(image, kernel, "small", padding="valid")
    # output (r, c) = sum_i sum_j kernel[i, j] * image[r + i, c + j], by hand for (0, 0):
    # 1*0 + 4*1 + 16*2 + 2*(4 + 4*5 + 16*6) = 36 + 240 = 276
    assert actual.shape == (2, 2) and actual[0, 0] == 276
    np.testing.assert_array_equal(actual, correlate_loop(image, kernel, (0, 0, 0, 0)))


@pytest.mark.parametrize("name", sorted(NAMED))
def test_program_choice(name):
    chosen = small_programs(NAMED[name].astype(np.float32), (1, 1))
    separable = name not in ("diagonal", "laplacian")
    assert len(chosen) == (2 if separable else 1)
    # exact int16 weights (8-bit images) keep the direct sum, whose bound was checked
    whole = np.round(NAMED[name] * 9).astype(np.int16)
    assert len(small_programs(whole, (1, 1))) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("shape", [(28, 28), (9, 11, 3), (3, 2), (1, 1)], ids=str)
def test_named_kernels_match_scipy(mode, name, dtype, shape):
    image = make_image(shape, dtype)
    kernel = NAMED[name]
    for flip, theirs in ((False, ndi.correlate), (True, ndi.convolve)):
        actual = worker(image, kernel, "small", pad_mode=mode, cval=7.0, flip=flip)
        assert_matches(actual, scipy_reference(theirs, image, kernel, mode, 7.0), dtype,
                       kernel, image)


@given(
    image=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=12),
                     elements=st.floats(-1e3, 1e3)),
    kshape=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    rank_one=st.booleans(),
    mode=st.sampled_from(MODES),
    cval=st.floats(-10, 10),
    flip=st.booleans(),
    dtype=st.sampled_from([np.float64, np.float32]),
)
def test_hypothesis_matches_scipy(image, kshape, rank_one, mode, cval, flip, dtype):
    kernel = distinct_kernel(*kshape)
    if rank_one:  # the separable passes
        kernel = np.outer(kernel[:, 0], kernel[0]) / kernel[0, 0]
    image = image.astype(dtype)
    actual = worker(image, kernel, "small", pad_mode=mode, cval=cval, flip=flip)
    expected = scipy_reference(ndi.convolve if flip else ndi.correlate, image, kernel, mode,
                               cval)
    assert_matches(actual, expected, dtype, kernel, image)


@given(case=geometries(), dtype=st.sampled_from([np.float32, np.float64, np.uint8]),
       bands=st.booleans())
def test_random_geometries_match_loop(case, dtype, bands):
    image = make_image(case["shape"], dtype, seed=case["seed"])
    with pytest.MonkeyPatch.context() as mp:
        if bands:
            mp.setattr(strategies, "SMALL_MAX_PIXELS", 5)
            mp.setattr(strategies, "GATHER_MAX_PIXELS", 0)
        strategies._small_setup.cache_clear()
        actual = worker(image, case["kernel"], "small", padding=case["padding"],
                        stride=case["stride"], dilation=case["dilation"], pad_mode=case["mode"],
                        cval=2.0)
    strategies._small_setup.cache_clear()
    expected = correlate_loop(image, case["kernel"], case["pads"], case["stride"],
                              case["dilation"], case["mode"], 2.0)
    assert_matches(actual, expected, dtype, case["kernel"], image)


@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("layout", ["gathered", "filled", "banded"])
def test_every_path_gives_the_same_bits(name, layout, monkeypatch):
    """Gathered whole, filled by the Padder, or in bands: the same sums, so the same bits."""
    image = make_image((37, 41, 2), np.float32)
    kernel = NAMED[name]
    strategies._small_setup.cache_clear()
    gathered = worker(image, kernel, "small")
    if layout != "gathered":
        monkeypatch.setattr(strategies, "GATHER_MAX_PIXELS", 0)
    if layout == "banded":
        monkeypatch.setattr(strategies, "SMALL_MAX_PIXELS", 50)
    strategies._small_setup.cache_clear()
    assert_same_bits(worker(image, kernel, "small"), gathered)
    strategies._small_setup.cache_clear()


@pytest.mark.parametrize("name", sorted(NAMED))
def test_stride_is_subsampled_stride_one_exactly(name):
    image = make_image((30, 23), np.float32)
    full = worker(image, NAMED[name], "small")
    np.testing.assert_array_equal(worker(image, NAMED[name], "small", stride=(3, 2)),
                                  full[::3, ::2])


@needs_numba
@once
@pytest.mark.parametrize("name", sorted(NAMED))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("shape", [(28, 28), (64, 64, 3), (300, 260)], ids=str)
def test_compiled_path_gives_the_numpy_bits(name, dtype, shape, monkeypatch):
    # (300 x 260 is past SMALL_MAX_PIXELS: bands on the pool)
    image = make_image(shape, dtype)
    plain, compiled = both_paths(lambda: worker(image, NAMED[name], "small"), monkeypatch)
    assert_same_bits(compiled, plain)


@needs_numba
@once
@given(case=geometries(compiled=True), dtype=st.sampled_from([np.float32, np.float64, np.uint8]))
def test_compiled_path_gives_the_numpy_bits_on_random_geometries(case, dtype):
    image = make_image(case["shape"], dtype, seed=case["seed"])
    plain, compiled = both_paths(lambda: worker(
        image, case["kernel"], "small", padding=case["padding"], stride=case["stride"],
        dilation=case["dilation"], pad_mode=case["mode"], cval=3.0))
    assert_same_bits(compiled, plain)


@pytest.mark.parametrize("name", ["box3", "sobel_x", "diagonal", "gaussian5"])
def test_cost_model_picks_small_for_small_planes(name):
    kernel = NAMED[name].astype(np.float32)
    assert choose_strategy(kernel, geometry((28, 28), kernel)) == "small"
    assert choose_strategy(kernel, geometry((64, 64), kernel)) == "small"
    # and never past SMALL_COST_PIXELS
    assert choose_strategy(kernel, geometry((1000, 600), kernel)) != "small"
    image = make_image((28, 28), np.float32)
    np.testing.assert_array_equal(imgconv.correlate(image, NAMED[name]),
                                  worker(image, NAMED[name], "small"))


def test_a_large_random_kernel_on_a_small_plane_goes_to_the_fft():
    kernel = np.random.default_rng(0).standard_normal((31, 31)).astype(np.float32)
    assert choose_strategy(kernel, geometry((28, 28), kernel)) == "fft"


def test_plans_do_not_leak_between_calls():
    image = make_image((8, 9), np.float32)
    kernel = distinct_kernel(3, 3)
    first = imgconv.correlate(image, kernel, pad_mode="constant", cval=1)
    # the same numbers, arguments of another type: still checked
    with pytest.raises(TypeError, match="cval must be a real number"):
        imgconv.correlate(image, kernel, pad_mode="constant", cval=True)
    with pytest.raises(TypeError, match="stride"):
        imgconv.correlate(image, kernel, stride=True)
    # -0.0 is its own fill value: a plane of fill only keeps its sign
    zeros = np.zeros((1, 1), np.float32)
    negative = imgconv.correlate(zeros, [[0.0, 0.0, 1.0]], pad_mode="constant", cval=-0.0)
    positive = imgconv.correlate(zeros, [[0.0, 0.0, 1.0]], pad_mode="constant", cval=0.0)
    assert np.signbit(negative[0, 0]) and not np.signbit(positive[0, 0])
    # a kernel changed in place is a new kernel
    kernel[1, 1] += 1000
    changed = imgconv.correlate(image, kernel, pad_mode="constant", cval=1)
    np.testing.assert_allclose(changed - first, 1000 * image, rtol=1e-5)
    # results are the caller's to change; the cached weights are not
    changed[0, 0] = 5
    _, weights, *_ = conv._prepare(image, kernel, padding="same", pad_mode="reflect", cval=0,
                                   stride=1, dilation=1, flip=False)
    assert not weights.flags.writeable
    # a non-finite kernel is refused every time, never cached
    for _ in range(2):
        with pytest.raises(ValueError, match="finite"):
            imgconv.correlate(image, [[1.0, np.nan]])


def test_plan_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(conv, "PLANS_MAX", 4)
    monkeypatch.setattr(conv, "_plans", {})
    image = make_image((5, 5), np.float32)
    for i in range(20):
        np.testing.assert_allclose(imgconv.correlate(image, [[float(i)]]), i * image, rtol=1e-6)
    assert len(conv._plans) <= 4
