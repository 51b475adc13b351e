"""The fast strategies: geometry, tiling, threads, the cost model and the kernel factors.

test_conv.py already runs every strategy against scipy.ndimage for "same"
padding; here each one is also checked for stride, dilation and explicit
padding against the loop reference, at tile boundaries, with several threads,
and the pieces (low-rank factors, tap programs, the cost model) on their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from reference import correlate_loop, distinct_kernel
from scipy import ndimage as ndi
from test_conv import (
    TAP_STRATEGIES,
    assert_matches,
    by_strategy,
    make_image,
    once,
    per_executor,
)

import imgconv
from imgconv.core import conv, jit, strategies, taps, threads, tiles
from imgconv.core.geometry import Geometry, resolve_padding
from imgconv.core.strategies import STRATEGIES, choose_strategy, costs
from imgconv.core.taps import build_program, low_rank, program_2d
from imgconv.kernels import resolve

# every test runs on both executors of the tap programs (conftest.executor), but for
# the ones marked `once` (they run no tap program) and compiled fft (by_strategy:
# fft runs none either)
pytestmark = pytest.mark.usefixtures("executor")

MODES = ("reflect", "mirror", "nearest", "wrap", "constant")
NAMED = {
    "box3": np.ones((3, 3)) / 9,
    "sobel_x": np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]),
    "prewitt_y": np.array([[-1.0, -1, -1], [0, 0, 0], [1, 1, 1]]),
    "scharr_x": np.array([[-3.0, 0, 3], [-10, 0, 10], [-3, 0, 3]]),
    "gaussian5": np.outer([1.0, 4, 6, 4, 1], [1.0, 4, 6, 4, 1]) / 256,
    "box15": np.ones((15, 15)) / 225,
    "diagonal": np.array([[-1.0, -1, 2], [-1, 2, -1], [2, -1, -1]]),
    "laplacian": np.array([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]),
}


def dense_kernel(kh, kw):
    """Distinct taps, like distinct_kernel, but shuffled: full rank, not a product of powers."""
    taps = distinct_kernel(kh, kw).ravel()
    return np.random.default_rng(kh * 10 + kw).permutation(taps).reshape(kh, kw)


def worker(image, kernel, strategy, **kw):
    args = {"padding": "same", "pad_mode": "reflect", "cval": 0.0, "stride": 1, "dilation": 1,
            "flip": False}
    args.update(kw)
    return conv._correlate(image, kernel, strategy=strategy, **args)


def geometry(shape, kernel, padding="same"):
    kshape = kernel.shape[:2]
    return Geometry(shape, kshape, resolve_padding(padding, kshape, (1, 1)), (1, 1), (1, 1))


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of a few rows, so that small images cross many tile boundaries."""
    monkeypatch.setattr(strategies, "TILE_BYTES", 64)
    monkeypatch.setattr(strategies, "FFT_TILE_ROWS", 8)
    monkeypatch.setattr(strategies, "FFT_TILE_COLS", 8)


@pytest.fixture
def restore_threads():
    yield
    threads.set_threads(None)


@by_strategy
@pytest.mark.parametrize(
    ("padding", "stride", "dilation"),
    [("valid", 2, 1), ("full", (1, 3), 2), ((0, 3, 1, 2), (2, 1), (1, 2)), (4, 3, 3),
     ("same", 2, 2), ((1, 1), 1, (3, 1))],
    ids=str,
)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tall", [False, True], ids=["one-tile", "inner-tiles"])
def test_geometry_matches_loop(monkeypatch, strategy, padding, stride, dilation, mode, tall):
    image = make_image((13, 11), np.float64)
    if tall:
        # many tiles, some of rows that are all image rows: those read the
        # image in place, with only the border columns padded
        image = make_image((40, 23), np.float64)
        monkeypatch.setattr(strategies, "TILE_BYTES", 64)
        monkeypatch.setattr(strategies, "FFT_TILE_ROWS", 8)
        monkeypatch.setattr(strategies, "FFT_TILE_COLS", 8)
    kernel = dense_kernel(3, 4)
    pads = resolve_padding(padding, (3, 4), conv.normalize_pair(dilation, "d"))
    actual = worker(image, kernel, strategy, padding=padding, stride=stride, dilation=dilation,
                    pad_mode=mode, cval=1.5)
    expected = correlate_loop(image, kernel, pads, conv.normalize_pair(stride, "s"),
                              conv.normalize_pair(dilation, "d"), mode, 1.5)
    assert_matches(actual, expected, np.float64, kernel, image)


@by_strategy
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int16])
def test_stride_and_dtypes_on_channels(strategy, dtype):
    image = make_image((9, 10, 3), dtype)
    kernel = dense_kernel(2, 3)
    actual = worker(image, kernel, strategy, padding=(1, 0, 2, 1), stride=2, flip=True,
                    pad_mode="constant")
    taps = kernel[::-1, ::-1]
    expected = np.stack([correlate_loop(image[:, :, c], taps, (1, 0, 2, 1), (2, 2))
                         for c in range(3)], -1)
    assert actual.dtype == np.float32
    assert_matches(actual, expected, np.float32, kernel, image)


@by_strategy
def test_stride_is_subsampled_stride_one_exactly(strategy):
    image = make_image((40, 37), np.float32)
    kernel = dense_kernel(5, 4)
    full = worker(image, kernel, strategy)
    np.testing.assert_array_equal(worker(image, kernel, strategy, stride=(3, 2)), full[::3, ::2])


@by_strategy
@pytest.mark.parametrize("height", [1, 2, 7, 23, 50])
@pytest.mark.parametrize("mode", ["reflect", "constant", "wrap"])
def test_tile_boundaries(small_tiles, strategy, height, mode):
    image = make_image((height, 6), np.float64)
    kernel = dense_kernel(5, 3)
    actual = worker(image, kernel, strategy, pad_mode=mode, cval=2.0)
    expected = ndi.correlate(image, kernel, mode=mode, cval=2.0)
    assert_matches(actual, expected, np.float64, kernel, image)
    strided = worker(image, kernel, strategy, pad_mode=mode, cval=2.0, stride=(2, 1))
    assert_matches(strided, expected[::2], np.float64, kernel, image)


@by_strategy
def test_one_row_and_one_column_images(strategy):
    for shape in ((1, 300), (300, 1), (1, 1)):
        image = make_image(shape, np.float32)
        kernel = dense_kernel(4, 5)
        expected = ndi.correlate(image.astype(np.float64), kernel, mode="mirror")
        assert_matches(worker(image, kernel, strategy, pad_mode="mirror"), expected,
                       np.float32, kernel, image)


@by_strategy
def test_threads_give_identical_results(small_tiles, restore_threads, strategy, monkeypatch):
    # 300 x 260 outputs a plane: above PARALLEL_MIN_PIXELS, so the pool runs
    image = make_image((300, 520, 2), np.uint8)
    kernel = dense_kernel(7, 6)
    threads.set_threads(1)
    one = worker(image, kernel, strategy, stride=(1, 2))
    pooled = []
    run_parallel = tiles.run_parallel
    monkeypatch.setattr(tiles, "run_parallel", lambda *a: pooled.append(1) or run_parallel(*a))
    for count in (2, 3):
        threads.set_threads(count)
        np.testing.assert_array_equal(worker(image, kernel, strategy, stride=(1, 2)), one)
    assert pooled
    expected = np.stack([ndi.correlate(image[:, :, c].astype(np.float64), kernel, mode="reflect")
                         for c in range(2)], -1)[:, ::2]
    assert_matches(one, expected, np.float32, kernel, image)


@once
def test_thread_count_settings(monkeypatch, restore_threads):
    monkeypatch.setenv("IMGCONV_THREADS", "3")
    assert threads.get_threads() == 3
    imgconv.core.set_threads(1)
    assert threads.get_threads() == 1  # set_threads wins over the environment
    imgconv.core.set_threads(None)
    assert threads.get_threads() == 3
    monkeypatch.delenv("IMGCONV_THREADS")
    assert threads.get_threads() == threads.available_cores()
    monkeypatch.setenv("IMGCONV_THREADS", "many")
    with pytest.raises(ValueError, match="IMGCONV_THREADS must be a whole number"):
        threads.get_threads()
    monkeypatch.setenv("IMGCONV_THREADS", "0")
    with pytest.raises(ValueError, match="IMGCONV_THREADS must be >= 1"):
        threads.get_threads()
    with pytest.raises(ValueError, match="threads must be >= 1 thread, got 0"):
        imgconv.core.set_threads(0)
    with pytest.raises(TypeError, match="threads must be a whole number"):
        imgconv.core.set_threads(2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected", "compiled"),
    [("box3", "separable", "direct"), ("sobel_x", "separable", "direct"),
     ("prewitt_y", "separable", "direct"), ("scharr_x", "separable", "direct"),
     ("gaussian5", "separable", "direct"), ("box15", "separable", "separable"),
     ("diagonal", "direct", "direct"), ("laplacian", "direct", "direct")],
)
def test_cost_model_choices(executor, name, expected, compiled):
    # the compiled path sums a direct program's taps in registers: direct is cheaper there
    kernel = NAMED[name].astype(np.float32)
    chosen = choose_strategy(kernel, geometry((3000, 4000), kernel))
    assert chosen == (compiled if executor == "compiled" else expected)


@pytest.mark.parametrize("size", [11, 15, 31])
def test_cost_model_sends_big_dense_kernels_to_fft(size):
    kernel = np.random.default_rng(size).standard_normal((size, size)).astype(np.float32)
    assert choose_strategy(kernel, geometry((3000, 4000), kernel)) == "fft"


@once
def test_cost_model_small_dense_kernel_is_direct():
    kernel = np.random.default_rng(0).standard_normal((3, 3)).astype(np.float32)
    found = costs(kernel, geometry((3000, 4000), kernel))
    assert min(found, key=found.__getitem__) == "direct"


@pytest.mark.parametrize(("size", "expected"), [(28, "small"), (64, "small"), (128, "direct"),
                                              (256, "direct")])
def test_compiled_small_planes_price_direct_without_a_padded_copy(size, expected):
    # the compiled direct reads a plane in place when it is in the working
    # dtype with contiguous rows: from about 96x96 it then beats small for a
    # 3x3 (docs/performance.md, JIT_DIRECT_SETUP_PIXELS); a plane it copies
    # (uint8, a channel of an (H, W, C) image) and the numpy path keep small
    kernel = NAMED["box3"].astype(np.float32)
    geom = geometry((size, size), kernel)
    for compiled, in_place, choice in ((True, True, expected), (True, False, "small"),
                                       (False, True, "small")):
        found = costs(kernel, geom, compiled=compiled, in_place=in_place)
        assert min(found, key=found.__getitem__) == choice, (compiled, in_place)


@pytest.mark.skipif(not jit.installed(), reason="numba is not installed")
def test_the_compiled_choice_knows_which_images_are_read_in_place():
    # (regression: a uint8 image or a channel took direct's discount too,
    # and was slower for it)
    jit.set_jit(True)
    try:
        kernel = NAMED["sobel_x"]
        for image, expected in ((np.zeros((128, 128), np.float32), "direct"),
                                (np.zeros((128, 128), np.uint8), "small"),
                                (np.zeros((128, 128, 3), np.float32), "small"),
                                (np.zeros((128, 128, 1), np.float32), "direct")):
            assert imgconv.core.conv.strategy_for(image, kernel) == expected, image.shape
            plan = conv._plan(image, kernel, padding="same", pad_mode="reflect", cval=0.0,
                              stride=1, dilation=1, flip=False)
            plane = image if image.ndim == 2 else image[:, :, 0]
            assert plan.strategy(None, plane)[0] is STRATEGIES[expected]
    finally:
        jit.set_jit(None)


def test_choice_ignores_stride():
    kernel = np.random.default_rng(0).standard_normal((9, 9)).astype(np.float32)
    unit = geometry((3000, 4000), kernel)
    strided = Geometry(unit.in_shape, unit.kernel_shape, unit.pads, (4, 4), (1, 1))
    assert choose_strategy(kernel, strided) == choose_strategy(kernel, unit)


def test_public_api_equals_the_chosen_strategy():
    image = make_image((20, 30, 3), np.uint8)
    for kernel in NAMED.values():
        w = kernel.astype(np.float32)
        name = choose_strategy(w, geometry((20, 30), w))
        np.testing.assert_array_equal(imgconv.correlate(image, kernel),
                                      worker(image, kernel, name))


@once
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_low_rank_factors_are_exact(rank):
    rng = np.random.default_rng(rank)
    kernel = sum(np.outer(rng.standard_normal(7), rng.standard_normal(5)) for _ in range(rank))
    pairs = low_rank(kernel)
    assert len(pairs) == rank
    np.testing.assert_allclose(sum(np.outer(u, v) for u, v in pairs), kernel, rtol=0,
                               atol=1e-13 * np.abs(kernel).max())


@once
def test_low_rank_of_full_rank_and_zero_kernels():
    kernel = dense_kernel(6, 4)
    pairs = low_rank(kernel)
    assert len(pairs) == 4
    # the powers-of-two kernel of the scipy tests is rank 1: (-2)**(4i + j) = 16**i * (-2)**j
    assert len(low_rank(distinct_kernel(6, 4))) == 1
    np.testing.assert_allclose(sum(np.outer(u, v) for u, v in pairs), kernel, rtol=0,
                               atol=1e-14 * np.abs(kernel).max())
    assert low_rank(np.zeros((3, 3))) == []


@once
@pytest.mark.parametrize("name", ["sobel_x", "prewitt_y", "scharr_x", "box3"])
def test_rank_one_kernels_keep_simple_factors(name):
    (u, v), = low_rank(NAMED[name])
    np.testing.assert_array_equal(np.outer(u, v), NAMED[name])
    # at least one factor is all integers: no irrational SVD factors
    assert any(np.array_equal(f, np.round(f)) for f in (u, v))


@by_strategy
def test_zero_kernel(strategy):
    image = make_image((5, 6), np.float64)
    out = worker(image, np.zeros((3, 2)), strategy, pad_mode="constant", cval=4.0)
    np.testing.assert_array_equal(out, np.zeros((5, 6)))


@once
def test_programs_skip_zeros_and_unit_multiplies():
    # 2*(c + e + g) - (a + b + d + f + h + i): two adds, one multiply, six subtracts
    assert program_2d(NAMED["diagonal"], (1, 1)).cost() == 9
    assert program_2d(NAMED["laplacian"], (1, 1)).cost() == 5
    assert program_2d(NAMED["box3"], (1, 1)).cost() == 9
    assert program_2d(np.zeros((3, 3)), (1, 1)).cost() == 1
    # a lone tap of weight 1 is a copy
    assert build_program([((0, 1, 1), 1.0)]).cost() == 1


@pytest.mark.parametrize("kernel", [
    np.array([[1.0, -2, 3], [0.5, 0, -4], [7, 1, 1]]),  # sums, diffs, the scratch register
    distinct_kernel(3, 3), NAMED["diagonal"]])
def test_spans_give_the_same_bits_and_write_only_between_the_rows(monkeypatch, kernel):
    # a pass over pitched rows as one 1-D span computes the places between
    # the rows too: the outputs must be the 2-D passes' bits, and nothing
    # outside the first row's start and the last row's end may change
    monkeypatch.setattr(taps, "SPAN_MIN_PIXELS", 1)
    program = program_2d(kernel.astype(np.float32), (1, 1))
    image = make_image((40, 300), np.float32) - 100
    rows, cols = 34, 285

    def run(spans, pitch):
        out = np.full((40, pitch), 12345.0, np.float32)
        scratch = np.full((40, pitch), 12345.0, np.float32)
        program.run([image[1:, 4:]], (rows, cols), (1, 1), out[2 : 2 + rows, 5 : 5 + cols],
                    scratch[:rows, :cols], compiled=False, spans=spans)
        return out

    expected = run(False, 300)
    window = (slice(2, 2 + rows), slice(5, 5 + cols))
    for pitch in (300, 301):  # the image's pitch (spans), another (2-D passes)
        got = run(True, pitch)
        np.testing.assert_array_equal(got[window].view(np.uint32),
                                      expected[window].view(np.uint32))
        touched = got.reshape(-1) != 12345.0
        first, last = 2 * pitch + 5, (1 + rows) * pitch + 5 + cols
        assert not touched[:first].any() and not touched[last:].any()
        # one pitch: the spans ran (places between the rows were computed);
        # pitches that differ: 2-D passes, nothing between the rows
        assert (touched.sum() > rows * cols) == (pitch == 300)


@pytest.mark.parametrize("strategy", ["direct", "separable"])
@pytest.mark.parametrize("name", ["laplacian", "diagonal", "box3", "sobel_x"])
@pytest.mark.parametrize("layout", ["windows", "valid"])
def test_windows_of_wider_arrays_keep_what_lies_outside(strategy, name, layout):
    # The passes may not run as spans over the places between rows that are
    # not the image's or the output's own. Regressions, on the numpy path:
    # "windows": an image and an out that are windows of wider arrays, of one
    # pitch; spans read the parent's other columns (infinite here: no warning
    # may come of them) and wrote the out's. "valid": an out narrower than the
    # array it is a window of, that array as wide as the image.
    kernel = NAMED[name].astype(np.float32)
    if layout == "windows":
        parent = np.full((600, 1300), np.inf, np.float32)
        parent[:, 100:1100] = make_image((600, 1000), np.float32)
        image, padding, window = parent[:, 100:1100], "same", np.s_[:, 100:1100]
        target = np.full((600, 1300), -7.0, np.float32)
    else:
        image, padding, window = make_image((600, 1000), np.float32), "valid", np.s_[:, :998]
        target = np.full((598, 1000), -7.0, np.float32)
    with np.errstate(all="raise"):
        STRATEGIES[strategy](image, kernel, geometry(image.shape, kernel, padding), "reflect",
                             0.0, out=target[window])
    outside = np.ones(target.shape, bool)
    outside[window] = False
    assert (target[outside] == -7).all()
    expected = ndi.correlate(image.astype(np.float64), kernel.astype(np.float64), mode="reflect")
    if layout == "valid":
        expected = expected[1:-1, 1:-1]
    np.testing.assert_allclose(target[window], expected, rtol=1e-5, atol=1e-3)


def test_direct_reads_no_columns_of_an_image_windows_parent(monkeypatch):
    # an image that is a window of a wider array and an output whose pitch is
    # that array's ("full" padding): one pitch, but the places between the
    # image's rows are the parent's, infinite here (regression guard: spans
    # there raised "invalid value" under errstate raise)
    monkeypatch.setattr(strategies, "TILE_BYTES", 16384)
    parent = np.full((60, 202), np.inf, np.float32)
    parent[:, :200] = make_image((60, 200), np.float32)
    image = parent[:, :200]
    kernel = NAMED["diagonal"].astype(np.float32)
    with np.errstate(all="raise"):
        got = STRATEGIES["direct"](image, kernel, geometry(image.shape, kernel, "full"),
                                   "reflect", 0.0)
    assert got.shape[1] == parent.shape[1]
    expected = ndi.correlate(np.pad(image.astype(np.float64), 2, mode="symmetric"),
                             kernel.astype(np.float64), mode="reflect")[1:-1, 1:-1]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_separable_border_strip_of_wide_kernels_on_narrow_images(small_tiles):
    # more border outputs than the image has columns, with a scratch register,
    # on tiles inside the image (regression: the strip's scratch was the
    # output's width)
    image = make_image((30, 4), np.float32)
    for kernel in (np.array([np.arange(1, 16), np.arange(15, 0, -1)], np.float32),
                   np.outer([1, 2, 1], np.arange(1, 20)).astype(np.float32)):
        got = worker(image, kernel, "separable")
        expected = ndi.correlate(image.astype(np.float64), kernel.astype(np.float64),
                                 mode="reflect")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("kernel", [distinct_kernel(3, 3), distinct_kernel(3, 3, channels=3)],
                         ids=["per-channel", "multi-channel"])
def test_correlate_into_uint8_with_post(kernel):
    image = make_image((17, 19, 3), np.uint8)
    expected = imgconv.correlate(image, kernel, stride=2)
    out = np.empty(expected.shape, np.uint8)

    def post(tile):
        np.clip(np.rint(tile, out=tile), 0, 255, out=tile)

    result = imgconv.core.correlate_into(image, kernel, out, stride=2, post=post)
    assert result is out
    np.testing.assert_array_equal(out, np.clip(np.rint(expected), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("takes_int16", [False, True])
def test_post_gets_int16_tiles_only_when_it_asks(takes_int16):
    image = make_image((30, 20), np.uint8)
    seen = set()

    def post(tile):
        seen.add(tile.dtype)
        np.clip(tile, 0, 255, out=tile)

    post.takes_int16 = takes_int16
    out = np.empty((30, 20), np.uint8)
    imgconv.core.correlate_into(image, NAMED["sobel_x"], out, post=post)
    assert seen == {np.dtype(np.int16) if takes_int16 else np.dtype(np.float32)}
    expected = np.clip(imgconv.correlate(image, NAMED["sobel_x"]), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_correlate_into_checks_out_and_flips():
    image = make_image((8, 9), np.float64)
    kernel = distinct_kernel(3, 2)
    out = np.empty((8, 9))
    imgconv.core.correlate_into(image, kernel, out, flip=True)
    np.testing.assert_array_equal(out, imgconv.convolve(image, kernel))
    with pytest.raises(ValueError, match=r"out must be an array of shape \(8, 9\)"):
        imgconv.core.correlate_into(image, kernel, np.empty((8, 8)))
    assert imgconv.core.output_shape((8, 9, 3), (3, 2), stride=2) == (4, 5, 3)


@pytest.mark.parametrize("name", ["diagonal", "sobel_x", "gaussian5", "random9"])
def test_correlate_into_the_image_itself(monkeypatch, name):
    # tiles are written while the next ones still read the rows above them
    monkeypatch.setattr(strategies, "TILE_BYTES", 64)
    image = make_image((40, 23), np.float64)
    kernel = (np.random.default_rng(3).random((9, 9)) if name == "random9"
              else NAMED[name])
    expected = ndi.correlate(image, kernel, mode="reflect")
    out = image.copy()
    imgconv.core.correlate_into(out, kernel, out)
    assert_matches(out, expected, np.float64, kernel, image)


@pytest.mark.parametrize("layout", ["rgbx", "reversed"])
def test_correlate_into_the_channels_themselves(monkeypatch, layout):
    # "rgbx": out is the image (channel by channel, each copied first);
    # "reversed": out overlaps the image in another order (the whole image copied)
    monkeypatch.setattr(strategies, "TILE_BYTES", 64)
    rgbx = make_image((30, 21, 4), np.float64)
    image = rgbx[:, :, :3]
    kernel = NAMED["sobel_x"]
    expected = np.stack([ndi.correlate(image[:, :, c], kernel, mode="reflect")
                         for c in range(3)], axis=2)
    out = image if layout == "rgbx" else image[:, :, ::-1]
    imgconv.core.correlate_into(image, kernel, out)
    for c in range(3):
        assert_matches(out[:, :, c], expected[:, :, c], np.float64, kernel, rgbx[:, :, c])


@once
@pytest.mark.parametrize(("size", "expected"), [("512K", 512 << 10), ("2048K\n", 2 << 20),
                                              ("1M", 1 << 20), ("lots", None)])
def test_l2_cache_size_is_read_from_sysfs(tmp_path, size, expected):
    for index, (level, kind, text) in enumerate([("1", "Data", "32K"), ("1", "Instruction", "32K"),
                                                 ("2", "Unified", size), ("3", "Unified", "32M")]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(level + "\n")
        (folder / "type").write_text(kind + "\n")
        (folder / "size").write_text(text)
    assert strategies.l2_cache_bytes(tmp_path) == expected
    (tmp_path / "index0" / "level").unlink()  # one unreadable entry spoils nothing
    assert strategies.l2_cache_bytes(tmp_path) == expected


@once
def test_importing_the_core_does_not_import_scipy():
    code = ("import sys, numpy as np, imgconv.core\n"
            "imgconv.core.correlate(np.ones((50, 50)), np.ones((3, 3)))\n"
            "print('scipy' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "IMGCONV_JIT"}  # numba imports scipy
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env=env)
    assert result.stdout.strip() == "False"



@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - {"fft"}))
@pytest.mark.parametrize("name", ["sobel_x", "gaussian5", "box3"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_pixels_stay_local(small_tiles, strategy, name):
    # matrix products also multiply the zeros of a band matrix: a tile with an
    # inf or a NaN falls back to the tap-by-tap passes, which skip zero taps
    # (rank-1 kernels: r > 1 pairs can meet inf - inf, with or without products)
    image = make_image((40, 37), np.float64)
    image[20, 10], image[5, 30] = np.inf, np.nan
    actual = worker(image, NAMED[name], strategy)
    expected = ndi.correlate(image, NAMED[name], mode="reflect")
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-9 * 255)


@by_strategy
@pytest.mark.parametrize(
    ("kernel", "stride"),
    [(NAMED["diagonal"], 4), (NAMED["diagonal"], 5), (np.array([[2.5]]), (2, 3))],
    ids=["3x3-s4", "3x3-s5", "1x1-s2x3"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_column_stride_wider_than_kernel(small_tiles, strategy, kernel, stride, dtype):
    # the last output column's taps end before the next stride step: the
    # border strip of the in-place path has no right-hand part (it crashed)
    image = make_image((30, 40), dtype)
    actual = worker(image, kernel, strategy, stride=stride)
    s = conv.normalize_pair(stride, "s")
    pads = resolve_padding("same", kernel.shape, (1, 1))
    expected = correlate_loop(image, kernel, pads, s, (1, 1), "reflect")
    assert actual.shape == expected.shape
    assert_matches(actual, expected, working(dtype), kernel, image)


def test_column_stride_wider_than_kernel_public_api():
    image = np.random.default_rng(0).random((600, 800)).astype(np.float32)
    kernel = [[-1, -1, 2], [-1, 2, -1], [2, -1, -1]]
    full = imgconv.correlate(image, kernel)
    for stride in (4, 5):
        np.testing.assert_array_equal(imgconv.correlate(image, kernel, stride=stride),
                                      full[::stride, ::stride])


def working(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def random_kernel(kind, kh, kw, rng):
    """A dense (full-rank), rank-1, or sparse whole-number kernel of shape (kh, kw)."""
    if kind == "rank1":
        return np.outer(rng.standard_normal(kh), rng.standard_normal(kw))
    kernel = rng.standard_normal((kh, kw))
    if kind == "sparse":
        kernel = np.round(kernel) * (rng.random((kh, kw)) < 0.6)
    return kernel


#: The kernels (kind, height, width, seed) the compiled path draws in geometries():
#: every height and width from 1 to 5, each kind at least twice, the sparse ones
#: with zeros and weights of 1, 2 and 3 in both signs. numba compiles a kernel for
#: each new program shape, which follows the taps' pattern of zeros, signs and equal
#: weights: random kernels make a new one nearly every example. The image, padding,
#: stride, dilation, border mode and tiles are drawn as on the numpy path.
COMPILED_KERNELS = [("dense", 1, 1, 0), ("dense", 2, 4, 0), ("dense", 5, 3, 0),
                    ("rank1", 3, 5, 0), ("rank1", 4, 2, 0), ("sparse", 5, 5, 4),
                    ("sparse", 1, 4, 3)]


@st.composite
def geometries(draw, compiled=None):
    """A random image, kernel, padding, stride, dilation and border mode with output >= 1.

    ``compiled``: the kernel is one of COMPILED_KERNELS (None: when tap programs
    run compiled as the example is drawn, after the executor fixture set the path).
    """
    if compiled is None:
        compiled = jit.enabled()
    if compiled:
        kind, kh, kw, kernel_seed = draw(st.sampled_from(COMPILED_KERNELS))
    else:
        kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    tall = draw(st.booleans())
    h = draw(st.integers(1, 40 if tall else 8))
    w = draw(st.integers(1, 8 if tall else 48))
    if draw(st.booleans()):
        pads = tuple(draw(st.integers(0, 6)) for _ in range(4))
        padding: object = pads
    else:
        padding = draw(st.sampled_from(["same", "valid", "full"]))
        pads = resolve_padding(padding, (kh, kw), dilation)
    ey, ex = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    assume(h + pads[0] + pads[1] >= ey and w + pads[2] + pads[3] >= ex)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if compiled:
        kernel = random_kernel(kind, kh, kw, np.random.default_rng(kernel_seed))
    else:
        kernel = random_kernel(draw(st.sampled_from(["dense", "rank1", "sparse"])), kh, kw, rng)
    return {"shape": (h, w), "kernel": kernel, "padding": padding, "pads": pads,
            "stride": stride, "dilation": dilation, "mode": draw(st.sampled_from(MODES)),
            "small": draw(st.booleans()), "public_fft": draw(st.booleans()),
            "seed": int(rng.integers(1000))}


@given(case=geometries(), dtype=st.sampled_from([np.float32, np.float64, np.uint8]))
@example(  # the shrunk crash of the direct strategy's right-hand border strip
    case={"shape": (1, 4), "kernel": np.array([[0.125, -0.132]]), "padding": "same",
          "pads": (0, 0, 1, 0), "stride": (1, 3), "dilation": (1, 1), "mode": "reflect",
          "small": False, "public_fft": False, "seed": 307},
    dtype=np.float32,
)
@example(  # a 1-row kernel long enough for the row products, borders from the fill value
    case={"shape": (1, 1), "kernel": np.array([[1.0, -1, -1, 1, -1]]), "padding": "same",
          "pads": (0, 0, 2, 2), "stride": (1, 1), "dilation": (1, 1), "mode": "constant",
          "small": False, "public_fft": False, "seed": 364},
    dtype=np.float32,
)
def test_every_strategy_matches_loop_on_random_geometries(case, dtype):
    image = make_image(case["shape"], dtype, seed=case["seed"])
    kernel = case["kernel"]
    expected = correlate_loop(image, kernel, case["pads"], case["stride"], case["dilation"],
                              case["mode"], 3.25)
    with pytest.MonkeyPatch.context() as mp:
        if case["small"]:
            # tiles of one or a few rows: most tiles are inside the image
            mp.setattr(strategies, "TILE_BYTES", 64)
            mp.setattr(strategies, "FFT_TILE_ROWS", 8)
            mp.setattr(strategies, "FFT_TILE_COLS", 8)
        if case["public_fft"]:
            # the FFT strategy as it runs where scipy's pocketfft binding is not usable
            mp.setattr(strategies, "_pocketfft", lambda: None)
        # (compiled fft would repeat numpy fft: it runs no tap program)
        for strategy in TAP_STRATEGIES if jit.enabled() else sorted(STRATEGIES):
            actual = worker(image, kernel, strategy, padding=case["padding"],
                            stride=case["stride"], dilation=case["dilation"],
                            pad_mode=case["mode"], cval=3.25)
            assert actual.shape == expected.shape, strategy
            assert actual.dtype == working(dtype), strategy
            assert_matches(actual, expected, working(dtype), kernel, image)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gaussian_is_separable_in_the_working_dtype(dtype):
    # float64 weights rounded to float32 leave a residual of ~1e-8 after one
    # pair: exact to float32 work, which must not fall back to 4 pairs or FFT
    kernel = resolve("gaussian:sigma=1").weights.astype(dtype)
    assert len(low_rank(kernel)) == 1
    assert choose_strategy(kernel, geometry((3000, 4000), kernel)) == "separable"


def test_gaussian_float32_separable_is_accurate():
    weights = resolve("gaussian:sigma=1").weights
    image = make_image((40, 37), np.float32)
    expected = ndi.correlate(image.astype(np.float64), weights, mode="reflect")
    assert_matches(worker(image, weights, "separable"), expected, np.float32, weights, image)


@pytest.mark.parametrize("strategy", [None, "direct", "separable"])  # FFT rounds at ~1e-9
def test_float64_near_separable_kernel_is_not_approximated(strategy):
    # rank 2 by 5e-13: one pair would drop 5e-13 * 1e6 = 5e-7 from every pixel
    kernel = np.ones((3, 3))
    kernel[2, 2] += 5e-13
    image = 1e6 + make_image((12, 11), np.uint8).astype(np.float64)
    actual = worker(image, kernel, strategy, pad_mode="nearest")
    pads = resolve_padding("same", (3, 3), (1, 1))
    # the ones part is a sum of integers (exact); the perturbation is added apart
    ones = correlate_loop(image, np.ones((3, 3)), pads, mode="nearest")
    extra = correlate_loop(image, kernel - 1.0, pads, mode="nearest")
    np.testing.assert_allclose(actual - ones, extra, rtol=0, atol=1e-8)
    np.testing.assert_allclose(actual, ones + extra, rtol=1e-15, atol=0)
    assert len(low_rank(kernel)) == 2


def test_changing_the_thread_count_while_other_threads_correlate(small_tiles, restore_threads):
    # a count change replaced the pool under a call that had just taken it:
    # "cannot schedule new futures after shutdown"
    image = make_image((300, 257), np.float32)
    kernel = dense_kernel(3, 3)
    threads.set_threads(1)
    expected = worker(image, kernel, "direct")
    errors: list[BaseException] = []
    done = threading.Event()

    def call() -> None:
        try:
            while not done.is_set():
                np.testing.assert_array_equal(worker(image, kernel, "direct"), expected)
        except BaseException as exc:  # reported by the main thread below
            errors.append(exc)
            done.set()

    callers = [threading.Thread(target=call) for _ in range(8)]
    for t in callers:
        t.start()
    deadline = time.monotonic() + 1.5
    count = 2
    while time.monotonic() < deadline and not done.is_set():
        threads.set_threads(count)
        count = 5 - count  # 2, 3, 2, ...
        time.sleep(0.001)
    done.set()
    for t in callers:
        t.join()
    assert not errors, errors[0]


# --- exact int16 arithmetic for 8-bit images and whole-number kernels -------------------

INT_KERNELS = {
    "sobel_x": NAMED["sobel_x"],
    "scharr_x": NAMED["scharr_x"],
    "diagonal": NAMED["diagonal"],
    "laplacian": NAMED["laplacian"],
    "kirsch_n": np.array([[5.0, 5, 5], [-3, 0, -3], [-3, -3, -3]]),
    "distinct_2x3": np.array([[1.0, -2, 3], [-4, 5, -6]]),  # even, every tap different
    "at_the_bound": np.array([[64.0, -64]]),  # |w| adds up to 128: 255 * 128 = 32640
}


def _scipy(image, kernel, mode, cval):
    return ndi.correlate(image.astype(np.float64), kernel, mode=mode, cval=cval)


@pytest.mark.parametrize("name", sorted(INT_KERNELS))
@pytest.mark.parametrize("strategy", ["direct", "separable"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_int16_path_equals_scipy_exactly(small_tiles, name, strategy, mode, dtype):
    kernel = INT_KERNELS[name]
    info = np.iinfo(dtype)
    image = np.random.default_rng(5).integers(info.min, info.max, (23, 17, 2), endpoint=True,
                                              dtype=dtype)
    image[:3, :3] = info.max  # the largest sums
    image[-3:, -3:] = info.min
    cval = float(info.min) if mode == "constant" else 0.0
    actual = worker(image, kernel, strategy, pad_mode=mode, cval=cval)
    expected = np.stack([_scipy(image[:, :, c], kernel, mode, cval) for c in range(2)], -1)
    assert actual.dtype == np.float32
    np.testing.assert_array_equal(actual, expected.astype(np.float32))


@once
def test_int16_is_used_exactly_when_it_cannot_overflow():
    from imgconv.core.strategies import exact_int16

    u8, i8 = np.dtype(np.uint8), np.dtype(np.int8)
    sobel = NAMED["sobel_x"].astype(np.float32)
    for strategy in ("direct", "separable"):
        assert exact_int16(sobel, strategy, u8, 0.0).dtype == np.int16
        assert exact_int16(sobel, strategy, i8, -128.0) is not None
    assert exact_int16(sobel, "fft", u8, 0.0) is None
    assert exact_int16(sobel, "direct", np.dtype(np.uint16), 0.0) is None
    assert exact_int16(sobel, "direct", np.dtype(np.float32), 0.0) is None
    assert exact_int16(sobel, "direct", u8, 0.5) is None  # the fill must be whole
    assert exact_int16(sobel, "direct", u8, 300.0) is not None  # 8 * 300 fits
    assert exact_int16(sobel, "direct", u8, 5000.0) is None  # 8 * 5000 does not
    # the fill value counts only with constant borders
    image = np.zeros((4, 4), np.uint8)
    _, weights = conv._strategy("direct", sobel, geometry((4, 4), sobel), image.dtype,
                                "reflect", 0.5)
    assert weights.dtype == np.int16
    _, weights = conv._strategy("direct", sobel, geometry((4, 4), sobel), image.dtype,
                                "constant", 0.5)
    assert weights.dtype == np.float32
    assert exact_int16(NAMED["box3"].astype(np.float32), "direct", u8, 0.0) is None
    assert exact_int16(np.array([[64.0, -64]]), "direct", u8, 0.0) is not None
    assert exact_int16(np.array([[64.0, -65]]), "direct", u8, 0.0) is None  # 129 * 255
    # separable: each factor must be whole; the diagonal's are not
    assert exact_int16(NAMED["diagonal"], "separable", u8, 0.0) is None
    assert exact_int16(NAMED["diagonal"], "direct", u8, 0.0) is not None
    # a long whole-number 1-D filter goes to the float32 matrix products
    binomial = np.outer([1.0, 4, 6, 4, 1], [1.0, 4, 6, 4, 1])
    assert exact_int16(binomial / 256, "separable", u8, 0.0) is None
    assert exact_int16(np.ones((3, 3, 2)), "direct", u8, 0.0) is None


@pytest.mark.parametrize("strategy", ["direct", "separable"])
def test_int16_path_at_and_over_the_bound(strategy):
    image = np.full((9, 8), 255, np.uint8)
    image[::2, ::3] = 0
    for kernel in (np.array([[64.0, -64], [0, 0]]), np.array([[64.0, 65], [0, 0]]),
                   np.array([[128.0, 0], [0, 1]])):
        expected = _scipy(image, kernel, "reflect", 0.0)
        np.testing.assert_array_equal(worker(image, kernel, strategy),
                                      expected.astype(np.float32))


#: The kernels test_int16_path_property draws on the compiled path (see
#: COMPILED_KERNELS): weights from -5 to 5, every height and width from 1 to 4, some
#: with whole separable factors and some without (diagonal, the 4x4, the 2x2).
INT16_COMPILED_KERNELS = [
    INT_KERNELS["sobel_x"], INT_KERNELS["diagonal"], INT_KERNELS["laplacian"],
    INT_KERNELS["kirsch_n"], np.array([[3.0]]), np.array([[1.0, -1], [2, 4]]),
    np.array([[1.0], [-2], [0], [5]]),
    np.array([[1.0, -2, 0, 3], [0, 5, -5, 1], [2, 0, 0, -1], [4, 1, -3, 0]]),
]


@given(
    kernel=per_executor(
        st.lists(st.lists(st.integers(-5, 5), min_size=1, max_size=4), min_size=1,
                 max_size=4).filter(lambda rows: len({len(r) for r in rows}) == 1),
        st.sampled_from([k.tolist() for k in INT16_COMPILED_KERNELS])),
    signed=st.booleans(),
    mode=st.sampled_from(MODES),
    strategy=st.sampled_from(["direct", "separable"]),
    seed=st.integers(0, 2**16),
)
def test_int16_path_property(kernel, signed, mode, strategy, seed):
    dtype = np.int8 if signed else np.uint8
    info = np.iinfo(dtype)
    image = np.random.default_rng(seed).integers(info.min, info.max, (11, 9), endpoint=True,
                                                 dtype=dtype)
    k = np.array(kernel, dtype=np.float64)
    cval = -3.0 if mode == "constant" else 0.0
    expected = _scipy(image, k, mode, cval)
    actual = worker(image, k, strategy, pad_mode=mode, cval=cval)
    if strategies.exact_int16(k.astype(np.float32), strategy, image.dtype, cval) is not None:
        np.testing.assert_array_equal(actual, expected.astype(np.float32))
    else:  # fractional factors (separable): float32, to float32's precision
        assert_matches(actual, expected, np.float32, k, image)


@once
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("binding", [True, False])
def test_block_transform_is_scipy_rfft2_and_irfft2(monkeypatch, dtype, binding):
    from scipy import fft as sfft

    if not binding:
        monkeypatch.setattr(strategies, "_pocketfft", lambda: None)
    elif strategies._pocketfft() is None:
        pytest.skip("this scipy's pocketfft binding does not take out=")
    rng = np.random.default_rng(5)
    block = rng.standard_normal((6, 10)).astype(dtype)
    transform = strategies.BlockTransform(6, 10, np.dtype(dtype))
    for _ in range(2):  # the second call reuses the buffers
        freq = transform.forward(block)
        np.testing.assert_array_equal(freq, sfft.rfft2(block, workers=1))
        real = transform.inverse(freq.copy())
        np.testing.assert_array_equal(real, sfft.irfft2(freq, s=(6, 10), workers=1))
        assert freq.dtype == np.result_type(dtype, np.complex64) and real.dtype == dtype
    # a smaller block is zero-padded to the block shape
    np.testing.assert_array_equal(transform.forward(block[:4, :7]),
                                  sfft.rfft2(block[:4, :7], s=(6, 10), workers=1))


@once
@pytest.mark.parametrize("broken", ["signature", "ignores out"])
def test_a_pocketfft_binding_that_does_not_fill_out_is_not_used(monkeypatch, broken):
    # a signature that changed, or an out= taken but a new array returned (our
    # buffers would stay unset): either way the public scipy.fft runs
    from scipy.fft._pocketfft import pypocketfft

    real = pypocketfft.r2c

    def changed(*args):
        raise TypeError("r2c() takes no argument 'out'")

    def ignores_out(a, axes, forward, inorm, out, nthreads):
        return real(a, axes, forward, inorm, None, nthreads)

    monkeypatch.setattr(pypocketfft, "r2c", changed if broken == "signature" else ignores_out)
    strategies._pocketfft.cache_clear()
    try:
        assert strategies._pocketfft() is None
    finally:
        monkeypatch.undo()
        strategies._pocketfft.cache_clear()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernel", [np.array([[1.0, -1, -1, 1, -1, 1, 1, -1, -1][:w]])
                                    for w in (1, 5, 9)] + [np.ones((1, 7))])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_row_kernels_through_the_row_products(mode, kernel, dtype):
    # a 1-row kernel of weights +-1 (or a 1xN box) factors as u = [1], which
    # needs no vertical pass, but the row products (cost >= GEMM_MIN_PASSES)
    # read that pass's output: tiles filled from a uint8 image or with
    # constant borders once gave zeros (box:1x7 on any 8-bit photo)
    image = make_image((20, 37), dtype)
    expected = ndi.correlate(image.astype(np.float64), kernel, mode=mode, cval=1.5)
    actual = worker(image, kernel, "separable", pad_mode=mode, cval=1.5)
    assert_matches(actual, expected, np.float32, kernel, image)
