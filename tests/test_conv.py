"""correlate and convolve against scipy.ndimage and against the loop reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import correlate_loop, distinct_kernel
from scipy import ndimage as ndi

import imgconv
from imgconv.core import jit
from imgconv.core.strategies import STRATEGIES

# every test runs on both executors of the tap programs (conftest.executor), but for
# the ones marked `once` (no tap program) and compiled fft (by_strategy)
pytestmark = pytest.mark.usefixtures("executor")

MODES = ("reflect", "mirror", "nearest", "wrap", "constant")
ALIASES = {"zero": ("constant", 0.0), "edge": ("nearest", None), "symmetric": ("reflect", None)}
DTYPES = (np.float64, np.float32, np.uint8)
KERNEL_SHAPES = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9),
                 (1, 4), (3, 2), (2, 5), (6, 1)]
IMAGE_SHAPES = [(9, 11), (3, 2), (1, 1)]  # the last two are smaller than most kernels


def make_image(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "u":
        return rng.integers(0, 256, size=shape).astype(dtype)
    return (rng.random(shape) * 200 - 100).astype(dtype)


def scipy_reference(func, image, kernel, mode, cval):
    """scipy.ndimage applied per channel, computed in float64."""
    image = image.astype(np.float64)
    if image.ndim == 2:
        return func(image, kernel, mode=mode, cval=cval)
    return np.stack(
        [func(image[:, :, c], kernel, mode=mode, cval=cval) for c in range(image.shape[2])], -1
    )


def assert_matches(actual, expected, dtype, kernel, image):
    """1e-9 relative in float64; float32 carries its own rounding."""
    scale = np.abs(kernel).sum() * max(1.0, float(np.abs(image.astype(np.float64)).max()))
    rtol = 1e-9 if np.dtype(dtype) == np.float64 else 2e-6
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


#: The strategies that run tap programs, which is where the executors differ: fft
#: runs none, so ``_correlate(strategy="fft")`` is the same computation on both.
#: (``small`` runs them too, over a whole small image: tests/test_small.py checks it
#: on both executors, bit for bit, against scipy and the loop reference.)
TAP_STRATEGIES = ("direct", "separable")

#: (executor, strategy) for tests parametrized by strategy: every strategy on numpy,
#: the tap strategies compiled too (compiled fft would repeat numpy fft exactly)
EXECUTOR_STRATEGIES = [
    pytest.param(executor, strategy, id=f"{executor}-{strategy}")
    for executor in ("numpy", "compiled") for strategy in sorted(STRATEGIES)
    if executor == "numpy" or strategy in TAP_STRATEGIES
]
by_strategy = pytest.mark.parametrize(("executor", "strategy"), EXECUTOR_STRATEGIES,
                                      indirect=["executor"])
#: for a test that runs no tap program: once, on the numpy executor
once = pytest.mark.parametrize("executor", ["numpy"], indirect=True)

SAME_PARAMS = ("executor", "strategy", "ishape", "channels", "dtype", "kshape", "mode")


def _same_cases():
    """The cases of test_same_matches_scipy: a covering design, not the full product.

    The full product of its seven parameters is 7,020 cases. Here:

    - the border handling's geometry in full: every (strategy, kernel shape, image
      shape, mode) on the numpy executor (585 cases), and every (tap strategy,
      kernel shape, image shape, mode) on the compiled one (390);
    - dtype and channels chosen greedily so that every pair of values of any two
      of the seven parameters occurs (compiled fft excepted, see TAP_STRATEGIES);
    - on the compiled executor one dtype per kernel shape, which the other
      parameters all meet: numba compiles a kernel per program shape and dtype,
      and a kernel shape's programs are compiled in one dtype, not three.

    test_same_cases_are_a_covering_design checks all of this.
    """
    values = {"executor": ("numpy", "compiled"), "strategy": tuple(sorted(STRATEGIES)),
              "ishape": tuple(IMAGE_SHAPES), "channels": (None, 3), "dtype": DTYPES,
              "kshape": tuple(KERNEL_SHAPES), "mode": MODES}
    seen: set = set()

    def pairs(case):
        items = list(zip(SAME_PARAMS, case, strict=True))
        return {(a, b) for i, a in enumerate(items) for b in items[i + 1:]}

    cases = []
    for executor in values["executor"]:
        for strategy, kshape, ishape, mode in itertools.product(
                values["strategy"], values["kshape"], values["ishape"], values["mode"]):
            if executor == "compiled" and strategy not in TAP_STRATEGIES:
                continue
            dtypes = values["dtype"]
            if executor == "compiled":
                dtypes = (DTYPES[KERNEL_SHAPES.index(kshape) % len(DTYPES)],)
            candidates = [(executor, strategy, ishape, channels, dtype, kshape, mode)
                          for dtype in dtypes for channels in values["channels"]]
            best = max(candidates, key=lambda case: len(pairs(case) - seen))
            seen |= pairs(best)
            cases.append(best)
    return values, cases


SAME_VALUES, SAME_CASES = _same_cases()


def _same_id(case):
    executor, strategy, ishape, channels, dtype, kshape, mode = case
    return "-".join([executor, strategy, str(ishape), str(channels), np.dtype(dtype).name,
                     str(kshape), mode])


@once
def test_same_cases_are_a_covering_design():
    values, cases = SAME_VALUES, SAME_CASES
    assert len(set(map(_same_id, cases))) == len(cases)
    index = {name: i for i, name in enumerate(SAME_PARAMS)}

    def column(*names):
        return {tuple(case[index[n]] for n in names) for case in cases}

    # every pair of values of every two parameters (compiled fft is not a case)
    for a, b in itertools.combinations(SAME_PARAMS, 2):
        expected = set(itertools.product(values[a], values[b]))
        if {a, b} == {"executor", "strategy"}:  # compiled: the tap strategies only
            untested = {("compiled", s) for s in values["strategy"] if s not in TAP_STRATEGIES}
            expected -= untested if a == "executor" else {(s, e) for e, s in untested}
        assert column(a, b) == expected, (a, b)
    # the geometry in full on each executor
    geometry = ("strategy", "kshape", "ishape", "mode")
    for executor, strategies in (("numpy", values["strategy"]), ("compiled", TAP_STRATEGIES)):
        found = {case[1:] for case in column("executor", *geometry) if case[0] == executor}
        assert found == set(itertools.product(strategies, *(values[n] for n in geometry[1:])))
    # one dtype per kernel shape on the compiled executor, every dtype among them
    compiled = column("executor", "kshape", "dtype")
    dtype_of = {k: d for e, k, d in compiled if e == "compiled"}
    assert len(dtype_of) == len([c for c in compiled if c[0] == "compiled"])
    assert set(dtype_of.values()) == set(DTYPES)


@pytest.mark.parametrize(SAME_PARAMS, SAME_CASES, ids=[_same_id(c) for c in SAME_CASES],
                         indirect=["executor"])
def test_same_matches_scipy(executor, strategy, ishape, channels, dtype, kshape, mode):
    shape = ishape if channels is None else (*ishape, channels)
    image = make_image(shape, dtype)
    kernel = distinct_kernel(*kshape)
    for flip, ours, theirs in ((False, imgconv.correlate, ndi.correlate),
                               (True, imgconv.convolve, ndi.convolve)):
        actual = imgconv.core.conv._correlate(
            image, kernel, padding="same", pad_mode=mode, cval=7.5, stride=1, dilation=1,
            flip=flip, strategy=strategy,
        )
        expected = scipy_reference(theirs, image, kernel, mode, 7.5)
        assert actual.shape == expected.shape
        assert_matches(actual, expected, dtype, kernel, image)
        # and the public function (whichever strategy the cost model picks) agrees too
        public = ours(image, kernel, pad_mode=mode, cval=7.5)
        assert_matches(public, expected, dtype, kernel, image)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_pad_mode_aliases(alias):
    image = make_image((6, 7), np.float64)
    kernel = distinct_kernel(4, 3)
    mode, forced_cval = ALIASES[alias]
    expected = ndi.correlate(image, kernel, mode=mode, cval=3.0 if forced_cval is None else 0.0)
    np.testing.assert_allclose(imgconv.correlate(image, kernel, pad_mode=alias, cval=3.0),
                               expected, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("flip", [False, True])
def test_large_kernel_on_tiny_image(mode, flip):
    """Padding many times wider than the image keeps repeating the border pattern."""
    image = make_image((3, 2), np.float64)
    kernel = distinct_kernel(31, 31)
    func = imgconv.convolve if flip else imgconv.correlate
    actual = func(image, kernel, pad_mode=mode, cval=1.0)
    taps = kernel[::-1, ::-1] if flip else kernel
    expected = correlate_loop(image, taps, (15, 15, 15, 15), mode=mode, cval=1.0)
    assert_matches(actual, expected, np.float64, kernel, image)
    if mode != "reflect":
        # scipy 1.17's N-D correlate reads past the line buffer in reflect mode once the
        # padding exceeds about four times the axis (3.2e-322 appears in its output), so
        # the loop reference is the oracle there; its 1-D path agrees with us.
        reference = (ndi.convolve if flip else ndi.correlate)(image, kernel, mode=mode, cval=1.0)
        assert_matches(actual, reference, np.float64, kernel, image)


def test_reflect_far_beyond_the_image_matches_scipy_1d():
    line = np.array([1.0, 2.0])
    kernel = distinct_kernel(1, 31)
    expected = ndi.correlate1d(line, kernel[0], mode="reflect")
    np.testing.assert_allclose(imgconv.correlate(line[None, :], kernel)[0], expected, rtol=1e-12)


@st.composite
def per_executor(draw, on_numpy, compiled):
    """A value of ``compiled`` while tap programs run compiled, else of ``on_numpy``.

    Read as each example is drawn, after the executor fixture has set the path.
    numba compiles a kernel for each new program shape (a program's shape
    follows its kernel's taps and their signs), so what the compiled path
    draws comes from a fixed set: its compile count stays bounded however many
    examples run, while the geometry around the kernel is drawn as freely.
    """
    return draw(compiled if jit.enabled() else on_numpy)


def table_shapes(largest):
    """Kernel shapes of KERNEL_SHAPES (compiled by test_same_matches_scipy) up to ``largest``.

    Together they take every height and every width from 1 to ``largest``.
    """
    shapes = [k for k in KERNEL_SHAPES if max(k) <= largest]
    assert {k[0] for k in shapes} == {k[1] for k in shapes} == set(range(1, largest + 1))
    return st.sampled_from(shapes)


@given(
    image=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=9),
                     elements=st.floats(-1e3, 1e3)),
    kshape=per_executor(st.tuples(st.integers(1, 7), st.integers(1, 7)), table_shapes(7)),
    mode=st.sampled_from(MODES),
    cval=st.floats(-10, 10),
    flip=st.booleans(),
)
def test_hypothesis_same_matches_scipy(image, kshape, mode, cval, flip):
    kernel = distinct_kernel(*kshape)
    func = imgconv.convolve if flip else imgconv.correlate
    expected = scipy_reference(ndi.convolve if flip else ndi.correlate, image, kernel, mode, cval)
    assert_matches(func(image, kernel, pad_mode=mode, cval=cval), expected, np.float64, kernel,
                   image)


@given(
    h=st.integers(1, 8), w=st.integers(1, 8),
    kshape=per_executor(st.tuples(st.integers(1, 4), st.integers(1, 4)), table_shapes(4)),
    pads=st.tuples(*[st.integers(0, 5)] * 4),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    mode=st.sampled_from(MODES),
    flip=st.booleans(),
)
def test_hypothesis_geometry_matches_loop(h, w, kshape, pads, stride, dilation, mode, flip):
    image = make_image((h, w), np.float64)
    kernel = distinct_kernel(*kshape)
    ey = dilation[0] * (kshape[0] - 1) + 1
    ex = dilation[1] * (kshape[1] - 1) + 1
    if h + pads[0] + pads[1] < ey or w + pads[2] + pads[3] < ex:
        with pytest.raises(ValueError, match="output would be empty"):
            imgconv.correlate(image, kernel, padding=pads, stride=stride, dilation=dilation)
        return
    func = imgconv.convolve if flip else imgconv.correlate
    taps = kernel[::-1, ::-1] if flip else kernel
    actual = func(image, kernel, padding=pads, stride=stride, dilation=dilation, pad_mode=mode,
                  cval=-2.0)
    expected = correlate_loop(image, taps, pads, stride, dilation, mode, -2.0)
    assert_matches(actual, expected, np.float64, kernel, image)


@pytest.mark.parametrize(
    ("padding", "pads"),
    [("valid", (0, 0, 0, 0)), ("full", (4, 4, 2, 2)), (2, (2, 2, 2, 2)),
     ((1, 3), (1, 1, 3, 3)), ((0, 3, 1, 2), (0, 3, 1, 2))],
    ids=str,
)
@pytest.mark.parametrize("stride", [1, 2, (3, 1)], ids=str)
def test_explicit_padding_with_dilation(padding, pads, stride):
    image = make_image((10, 9), np.float64)
    kernel = distinct_kernel(3, 2)
    actual = imgconv.correlate(image, kernel, padding=padding, stride=stride, dilation=(2, 2),
                               pad_mode="constant", cval=0.0)
    s = (stride, stride) if isinstance(stride, int) else stride
    expected = correlate_loop(image, kernel, pads, s, (2, 2))
    assert_matches(actual, expected, np.float64, kernel, image)


@pytest.mark.parametrize("kshape", [(3, 3), (4, 4), (2, 5)], ids=str)
@pytest.mark.parametrize("stride", [2, 3, (2, 3)], ids=str)
@pytest.mark.parametrize("func", [imgconv.correlate, imgconv.convolve])
def test_same_with_stride_is_subsampled_same(kshape, stride, func):
    image = make_image((11, 10), np.float64)
    kernel = distinct_kernel(*kshape)
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    strided = func(image, kernel, stride=stride)
    np.testing.assert_array_equal(strided, func(image, kernel)[::sy, ::sx])
    assert strided.shape == (-(-11 // sy), -(-10 // sx))


@pytest.mark.parametrize("dilation", [2, (1, 3)], ids=str)
def test_same_with_dilation_keeps_size(dilation):
    image = make_image((12, 9), np.float64)
    kernel = distinct_kernel(3, 4)
    actual = imgconv.correlate(image, kernel, dilation=dilation, pad_mode="wrap")
    dy, dx = (dilation, dilation) if isinstance(dilation, int) else dilation
    pads = (dy * 1, dy * 1, dx * 2, dx * 1)
    expected = correlate_loop(image, kernel, pads, (1, 1), (dy, dx), "wrap")
    assert actual.shape == image.shape
    assert_matches(actual, expected, np.float64, kernel, image)


def test_convolve_with_explicit_padding_is_flipped_correlate():
    image = make_image((8, 8, 2), np.float64)
    kernel = distinct_kernel(4, 3)
    for padding in ("valid", "full", (1, 2, 0, 3)):
        np.testing.assert_array_equal(
            imgconv.convolve(image, kernel, padding=padding, stride=2),
            imgconv.correlate(image, kernel[::-1, ::-1], padding=padding, stride=2),
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("mode", MODES)
def test_multichannel_filter_is_sum_of_channel_correlations(dtype, mode):
    image = make_image((7, 8, 3), dtype)
    kernel = distinct_kernel(3, 4, channels=3)
    expected = sum(
        ndi.correlate(image[:, :, c].astype(np.float64), kernel[:, :, c], mode=mode, cval=1.0)
        for c in range(3)
    )
    actual = imgconv.correlate(image, kernel, pad_mode=mode, cval=1.0)
    assert actual.shape == (7, 8)
    assert_matches(actual, expected, dtype, kernel, image)


def test_multichannel_filter_with_stride_and_valid():
    image = make_image((9, 9, 2), np.float64)
    kernel = distinct_kernel(3, 3, channels=2)
    actual = imgconv.correlate(image, kernel, padding="valid", stride=2)
    expected = sum(correlate_loop(image[:, :, c], kernel[:, :, c], (0, 0, 0, 0), (2, 2))
                   for c in range(2))
    assert actual.shape == (4, 4)
    assert_matches(actual, expected, np.float64, kernel, image)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(np.uint8, np.float32), (np.int16, np.float32), (np.uint16, np.float32),
     (np.int64, np.float32), (np.bool_, np.float32), (np.float16, np.float32),
     (np.float32, np.float32), (np.float64, np.float64)],
    ids=lambda d: np.dtype(d).name,
)
def test_output_dtype(dtype, expected):
    image = np.ones((4, 4), dtype=dtype)
    assert imgconv.correlate(image, [[1.0]]).dtype == expected
    assert imgconv.convolve(image, [[1.0]]).dtype == expected


def test_no_integer_wraparound():
    image = np.full((3, 3), 10, dtype=np.uint8)
    out = imgconv.correlate(image, [[-2.0]])
    assert out[1, 1] == -20.0
    out = imgconv.correlate(np.full((3, 3), 200, dtype=np.uint8), np.ones((3, 3)))
    assert out[1, 1] == 1800.0


def test_hand_computed_case():
    # a 3x3 image and a kernel with distinct taps, worked out by hand
    image = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    kernel = np.array([[1.0, 2.0], [4.0, 8.0]])
    # valid correlation: top-left = 1*1 + 2*2 + 4*4 + 8*5 = 61
    np.testing.assert_array_equal(
        imgconv.correlate(image, kernel, padding="valid"), [[61.0, 76.0], [106.0, 121.0]]
    )
    # valid convolution flips the kernel: top-left = 8*1 + 4*2 + 2*4 + 1*5 = 29
    np.testing.assert_array_equal(
        imgconv.convolve(image, kernel, padding="valid"), [[29.0, 44.0], [74.0, 89.0]]
    )
    # same, zero padding, anchor (1, 1): output[0, 0] sees image[-1:1, -1:1]
    same = imgconv.correlate(image, kernel, pad_mode="zero")
    assert same[0, 0] == 8.0 * 1.0
    assert same[2, 2] == 1.0 * 5.0 + 2.0 * 6.0 + 4.0 * 8.0 + 8.0 * 9.0


def test_vertical_edge_gives_vertical_line():
    image = np.zeros((8, 8))
    image[:, 4:] = 1.0
    sobel_x = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    out = imgconv.correlate(image, sobel_x)
    assert (out[:, 3:5] == 4.0).all()  # brightness rises to the right: positive
    assert (out[:, :3] == 0).all() and (out[:, 5:] == 0).all()


def test_input_is_not_modified():
    image = make_image((6, 6, 3), np.float64)
    before = image.copy()
    imgconv.correlate(image, distinct_kernel(3, 3), stride=2, dilation=2)
    np.testing.assert_array_equal(image, before)
