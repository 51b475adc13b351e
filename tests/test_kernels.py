"""The kernel model, the built-in library, families, rotations and combine."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import imgconv
from imgconv.errors import KernelError
from imgconv.kernels import (
    COMBINES,
    OUTPUT_MAPS,
    Kernel,
    KernelBank,
    catalog,
    combine,
    describe,
    resolve,
    rotate_matrix,
    separable_factors,
)
from imgconv.kernels.families import make

SOBEL_X = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
PREWITT_X = [[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]]
SCHARR_X = [[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]]
EXPECTED = {
    "identity": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
    "box-blur": np.ones((3, 3)) / 9,
    "gaussian-blur": np.outer([1, 2, 1], [1, 2, 1]) / 16,
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "emboss": [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]],
    "outline": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
    "motion-blur": np.eye(9) / 9,
    "sobel-x": SOBEL_X,
    "sobel-y": np.transpose(SOBEL_X),
    "prewitt-x": PREWITT_X,
    "prewitt-y": np.transpose(PREWITT_X),
    "scharr-x": SCHARR_X,
    "scharr-y": np.transpose(SCHARR_X),
    "diagonal-45": [[-1, -1, 2], [-1, 2, -1], [2, -1, -1]],
    "diagonal-135": [[2, -1, -1], [-1, 2, -1], [-1, -1, 2]],
}
EDGE = ["sobel-x", "sobel-y", "prewitt-x", "prewitt-y", "scharr-x", "scharr-y", "laplacian",
        "outline", "diagonal-45", "diagonal-135", "sobel", "prewitt", "scharr", "kirsch",
        "diagonal"]
BLUR = ["box-blur", "gaussian-blur", "motion-blur"]


@pytest.fixture(autouse=True)
def _no_user_kernels(tmp_path, monkeypatch):
    monkeypatch.delenv("IMGCONV_KERNEL_PATH", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_weights(name):
    kernel = resolve(name)
    assert isinstance(kernel, Kernel)
    assert kernel.name == name and kernel.source == "built-in" and kernel.description
    assert kernel.weights.dtype == np.float64
    np.testing.assert_allclose(kernel.weights, np.asarray(EXPECTED[name], float), atol=1e-15)


@pytest.mark.parametrize(
    ("name", "members", "how"),
    [
        ("sobel", ["sobel-x", "sobel-y"], "magnitude"),
        ("prewitt", ["prewitt-x", "prewitt-y"], "magnitude"),
        ("scharr", ["scharr-x", "scharr-y"], "magnitude"),
        ("diagonal", ["diagonal-45", "diagonal-135"], "max"),
    ],
)
def test_builtin_banks(name, members, how):
    bank = resolve(name)
    assert isinstance(bank, KernelBank)
    assert bank.combine == how and bank.output == "abs"
    assert [k.name for k in bank.kernels] == members
    for k in bank.kernels:
        np.testing.assert_array_equal(k.weights, np.asarray(EXPECTED[k.name], float))


def test_kirsch_is_the_eight_compass_rotations():
    bank = resolve("kirsch")
    assert isinstance(bank, KernelBank) and bank.combine == "max"
    north = np.array([[5, 5, 5], [-3, 0, -3], [-3, -3, -3]], float)
    assert len(bank.kernels) == 8
    np.testing.assert_array_equal(bank.kernels[0].weights, north)
    np.testing.assert_array_equal(bank.kernels[2].weights, np.rot90(north))
    # Each rotation moves the three 5s one step round the ring; all 8 differ.
    assert len({k.weights.tobytes() for k in bank.kernels}) == 8
    for k in bank.kernels:
        assert sorted(k.weights.ravel()) == sorted(north.ravel())
        assert k.weights[1, 1] == 0


@pytest.mark.parametrize("name", EDGE)
def test_edge_kernels_prefer_abs(name):
    assert resolve(name).output == "abs"


@pytest.mark.parametrize("name", BLUR)
def test_blurs_prefer_clip_and_sum_to_one(name):
    kernel = resolve(name)
    assert kernel.output == "clip"
    assert kernel.weights.sum() == pytest.approx(1.0)


def test_sobel_x_is_positive_where_brightness_rises_to_the_right():
    image = np.zeros((5, 6))
    image[:, 3:] = 1.0
    out = imgconv.correlate(image, resolve("sobel-x").weights)
    assert (out[:, 2:4] > 0).all() and (out[:, :1] == 0).all()
    out_y = imgconv.correlate(image.T, resolve("sobel-y").weights)
    assert (out_y[2:4, :] > 0).all()


def test_diagonal_45_responds_to_lines_rising_to_the_right():
    rising = np.fliplr(np.eye(7))
    r45 = imgconv.correlate(rising, resolve("diagonal-45").weights, padding="valid")
    r135 = imgconv.correlate(rising, resolve("diagonal-135").weights, padding="valid")
    assert r45.max() == 6 and r45.max() > r135.max()


def test_every_catalog_entry_resolves():
    names = [e.name for e in catalog()]
    assert set(EXPECTED) | {"sobel", "prewitt", "scharr", "kirsch", "diagonal"} <= set(names)
    assert {"box", "gaussian", "motion", "log"} <= set(names)
    for name in names:
        resolve(name)


# --- families -----------------------------------------------------------------------------


def gaussian_reference(sigma, size):
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


@pytest.mark.parametrize(("spec", "sigma", "size"), [
    ("gaussian:sigma=1", 1, 7), ("gaussian:sigma=2", 2, 13), ("gaussian:sigma=0.5,size=5", 0.5, 5),
    ("gaussian:1.5", 1.5, 11), ("gaussian", 1, 7), ("gaussian:sigma=1/3", 1 / 3, 3),
])
def test_gaussian_family(spec, sigma, size):
    kernel = resolve(spec)
    assert kernel.shape == (size, size) and kernel.source == "family"
    np.testing.assert_allclose(kernel.weights, gaussian_reference(sigma, size), rtol=1e-12)


@pytest.mark.parametrize(("spec", "shape"), [("box:5", (5, 5)), ("box:3x5", (3, 5)),
                                             ("box", (3, 3)), ("box:size=1x4", (1, 4))])
def test_box_family(spec, shape):
    kernel = resolve(spec)
    np.testing.assert_allclose(kernel.weights, np.full(shape, 1 / np.prod(shape)))
    assert kernel.output == "clip"


def test_motion_family():
    horizontal = resolve("motion:length=5")
    np.testing.assert_allclose(horizontal.weights[2], [0.2] * 5)
    assert horizontal.weights.sum() == pytest.approx(1)
    vertical = resolve("motion:length=5,angle=90").weights
    np.testing.assert_allclose(vertical, horizontal.weights.T)
    rising = resolve("motion:length=3,angle=45").weights
    np.testing.assert_allclose(rising, np.fliplr(np.eye(3)) / 3)
    np.testing.assert_allclose(resolve("motion:length=7,angle=135").weights, np.eye(7) / 7)
    np.testing.assert_allclose(resolve("motion:length=7,angle=-45").weights, np.eye(7) / 7)


@pytest.mark.parametrize(("spec", "taps"), [
    # Even lengths: the half-pixel offset goes to the right / down.
    ("motion:length=4", [(2, 1), (2, 2), (2, 3), (2, 4)]),
    ("motion:length=4,angle=90", [(1, 2), (2, 2), (3, 2), (4, 2)]),
    ("motion:length=2,angle=45", [(1, 2), (2, 1)]),
    ("motion:length=1,angle=30", [(0, 0)]),
    ("motion:length=9,angle=30", [(6, 0), (6, 1), (5, 2), (5, 3), (4, 4), (3, 5), (3, 6),
                                  (2, 7), (2, 8)]),
])
def test_motion_taps_exact(spec, taps):
    kernel = resolve(spec)
    assert sorted(zip(*np.nonzero(kernel.weights), strict=True)) == sorted(taps)
    assert np.all(kernel.weights[kernel.weights != 0] == 1 / len(taps))


@given(st.integers(1, 80), st.floats(-720, 720, allow_nan=False))
@settings(max_examples=150, deadline=None)
def test_motion_has_length_taps_on_the_line(length, angle):
    w = resolve(f"motion:length={length},angle={angle!r}").weights
    rows, cols = np.nonzero(w)
    assert len(rows) == length
    assert w.sum() == pytest.approx(1) and w.shape[0] == w.shape[1] and w.shape[0] % 2 == 1
    assert w.shape[0] // 2 == max(np.abs(rows - w.shape[0] // 2).max(),
                                  np.abs(cols - w.shape[1] // 2).max())
    # Every tap lies within a pixel of the line through the centre at that angle.
    c = w.shape[0] // 2
    a = np.radians(angle)
    distance = np.abs((cols - c) * np.sin(a) + (rows - c) * np.cos(a))
    assert distance.max() <= 0.71
    # and the taps form one 8-connected run, at most one per step of the major axis.
    major = cols if abs(np.cos(a)) >= abs(np.sin(a)) - 1e-9 else rows
    assert len(set(major.tolist())) == length or length == 1


@given(st.integers(1, 60), st.integers(-720, 720))
@settings(max_examples=100, deadline=None)
def test_motion_is_the_same_turned_by_180(length, angle):
    w = resolve(f"motion:length={length},angle={angle}").weights
    np.testing.assert_array_equal(w, resolve(f"motion:length={length},angle={angle + 180}").weights)
    if length % 2:
        # An odd line is centred: point-symmetric, and mirroring it negates the angle.
        np.testing.assert_array_equal(w, w[::-1, ::-1])
        mirrored = resolve(f"motion:length={length},angle={-angle}").weights
        np.testing.assert_array_equal(mirrored, w[::-1])


def test_log_family():
    kernel = resolve("log:sigma=1.4")
    assert kernel.shape == (11, 11) and kernel.output == "abs"
    w = kernel.weights
    assert abs(w.sum()) < 1e-12 and w[5, 5] == w.min() < 0
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1])


@pytest.mark.parametrize(("spec", "message"), [
    ("box:0", r"size must be >= 1, got 0; box accepts size=N or HxW"),
    ("box:3x0", r"width must be >= 1"),
    ("box:2.5", r"size must be a whole number"),
    ("gaussian:sigma=-1", r"sigma must be >= 0.01, got -1; gaussian accepts sigma=S"),
    ("gaussian:sigma=0", r"sigma must be >= 0.01"),
    ("gaussian:sigma=1,size=4", r"size must be odd"),
    ("gaussian:sigam=2", r"unknown parameter 'sigam' \(did you mean sigma\?\); gaussian accepts"),
    ("gaussian:sigma=abc", r"sigma must be a number, got 'abc'"),
    ("gaussian:sigma=1e9", r"larger than the limit 1001"),
    ("motion:length=0", r"length must be >= 1"),
    ("motion:lenght=3", r"did you mean length"),
    ("log:sigma=-2", r"sigma must be >= 0.01"),
    ("gaussian:sigma=1,sigma=2", r"given twice"),
    ("gaussian:=2", r"'=2' has no parameter name before '='; gaussian accepts sigma=S"),
    ("box:size=3,=2", r"'=2' has no parameter name"),
    ("1 1e400", r"column 2 must be a finite number, got '1e400'"),
    ("1e400/1e400", r"must be a finite number"),
    ("sobel-x:3", r"'sobel-x' is a kernel .*not a family, so it takes no parameters"),
    # issue 14, items 19 and 20: no OverflowError, no numpy warning, the parameter named
    ("gaussian:sigma=1e308", r"sigma=1e\+308 gives a kernel larger than the limit 1001"),
    ("log:sigma=1e308", r"sigma=1e\+308 gives a kernel larger than the limit 1001"),
    ("gaussian:sigma=1e-300", r"sigma must be >= 0.01, got 1e-300; gaussian accepts sigma=S"),
    ("log:sigma=0.001,size=5", r"sigma must be >= 0.01"),
    ("log:sigma=1e308,size=5", r"for log: the parameters are out of range"),
    ("1e308 1", r"inline kernel '1e308 1':.*matrix value 1e\+308 at row 1, column 1 is larger "
                r"than float32's largest, 3.403e\+38"),
])
def test_bad_family_parameters(spec, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning fails the test
        with pytest.raises(KernelError, match=message):
            resolve(spec)


@pytest.mark.parametrize("spec", ["gaussian:sigma=0.01", "log:sigma=0.01", "log:sigma=166",
                                  "gaussian:sigma=1e308,size=5", "[[1e38, 1e38]]"])
def test_extreme_parameters_that_work(spec):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(resolve(spec).weights).all()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"matrix": [[1e39]]}, r"kernel 'k': the matrix value 1e\+39 at row 1, column 1 is larger"),
    ({"matrix": [[1]], "scale": 1e39}, r"kernel 'k': scale 1e\+39 is larger than float32's"),
    ({"matrix": [[1]], "bias": -1e39}, r"kernel 'k': bias -1e\+39 is larger than float32's"),
    ({"matrix": [[1e38]], "scale": 10}, r"the weights \(matrix × scale\) reach 1e\+39"),
])
def test_weights_that_overflow_float32_are_refused(kwargs, message):
    with pytest.raises(KernelError, match=message):
        Kernel("k", **kwargs)


# --- inline ---------------------------------------------------------------------------------


def test_a_complex_kernel_is_refused_not_made_real():
    # issue 14, item 32: numpy's ComplexWarning and the dropped imaginary part
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KernelError, match=r"^kernel 'c': the matrix must hold real numbers, "
                                              r"got dtype complex128$"):
            Kernel("c", np.array([[1j]]))


@pytest.mark.parametrize(("spec", "rows"), [("[1, 2, 1]", [[1, 2, 1]]), ("[1]", [[1]]),
                                             ("[1, 2, 1]", resolve("1 2 1").matrix.tolist())])
def test_an_inline_flat_list_is_one_row_as_text_is(spec, rows):
    # issue 14, item 32: "[1,2,1]" failed with "inline kernel '[1,2,1]':1: matrix rows must be
    # lists"; a flat list reads as the one row "1 2 1" does (1×N), in files too
    assert resolve(spec).matrix.tolist() == rows


def test_inline_errors_have_no_line_number():
    with pytest.raises(KernelError, match=r"^inline kernel '\[\[1, 2\], \[1\]\]': matrix row 2"):
        resolve("[[1, 2], [1]]")


@pytest.mark.parametrize("spec", ["0 1 0; 1 -4 1; 0 1 0", "0,1,0;1,-4,1;0,1,0",
                                  "[[0, 1, 0], [1, -4, 1], [0, 1, 0]]", " 0 1 0 ;1 -4 1; 0 1 0; "])
def test_inline(spec):
    kernel = resolve(spec)
    assert kernel.source == "inline"
    np.testing.assert_array_equal(kernel.weights, EXPECTED["laplacian"])


def test_inline_fractions_and_exponents():
    weights = resolve("1/9 1/9; -1/4 1e-3").weights
    np.testing.assert_allclose(weights, [[1 / 9, 1 / 9], [-0.25, 1e-3]])
    assert resolve("2").shape == (1, 1)


@pytest.mark.parametrize(("spec", "message"), [
    ("1 2; 3", r"inline kernel '1 2; 3': matrix row 2 has 1 number but row 1 has 2 \(ragged"),
    ("1 x; 3 4", r"row 1, column 2 must be a number, got 'x'"),
    ("1/0 1", r"'1/0' divides by zero"),
    ("1 nan", r"must be a finite number"),
    ("1 inf", r"must be a finite number"),
    (";", r"matrix is empty"),
    ("[[1, 2], [3]]", r"ragged rows"),
    ("[[1, 2]", r"not valid YAML"),
    ("", r"a kernel spec must be"),
])
def test_bad_inline(spec, message):
    with pytest.raises(KernelError, match=message):
        resolve(spec)


def test_unknown_names_suggest_close_ones():
    with pytest.raises(KernelError, match=r"unknown kernel 'sobl' \(did you mean sobel"):
        resolve("sobl")
    with pytest.raises(KernelError, match=r"unknown kernel 'qwertyuiop'; `imgconv list`"):
        resolve("qwertyuiop")


# --- model ------------------------------------------------------------------------------------


def test_kernel_defaults_and_weights():
    k = Kernel("k", [[1, 2], [3, 4]], scale=0.5)
    assert k.center == (1, 1) and k.anchor is None and k.channels is None
    np.testing.assert_array_equal(k.weights, [[0.5, 1], [1.5, 2]])
    assert not k.matrix.flags.writeable
    assert k == Kernel("k", np.array([[1.0, 2], [3, 4]]), scale=0.5)
    assert k != Kernel("k", [[1, 2], [3, 5]], scale=0.5)
    assert len({k, Kernel("k", [[1, 2], [3, 4]], scale=0.5)}) == 1
    assert Kernel("m", np.ones((3, 3, 2))).channels == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"matrix": [[]]}, "empty"),
    ({"matrix": [1, 2]}, "2-D"),
    ({"matrix": [[np.nan]]}, "finite"),
    ({"scale": 0}, "scale must not be zero"),
    ({"scale": True}, "scale must be a number"),
    ({"bias": np.inf}, "bias must be a finite number"),
    ({"anchor": (3, 0)}, r"anchor must be two ints"),
    ({"anchor": (0.5, 0)}, r"anchor must be two ints"),
    ({"output": "bogus"}, r"output must be one of clip, abs, offset, normalize"),
])
def test_bad_kernel_fields(kwargs, message):
    with pytest.raises(KernelError, match=message):
        Kernel(**{"name": "k", "matrix": [[1, 2], [3, 4]], **kwargs})


def test_bank_members_must_share_a_shape():
    with pytest.raises(KernelError, match=r"all kernels must have the same shape"):
        KernelBank("b", (Kernel("a", [[1]]), Kernel("c", [[1, 2]])), "max")
    with pytest.raises(KernelError, match=r"combine must be one of"):
        KernelBank("b", (Kernel("a", [[1]]),), "avg")


def test_contract_constants():
    assert OUTPUT_MAPS == ("clip", "abs", "offset", "normalize")
    assert COMBINES == ("magnitude", "max", "min", "sum", "mean", "stack")


# --- combine ----------------------------------------------------------------------------------


arrays = st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=6).map(
    lambda v: np.array(v).reshape(2, 3)
)


@given(st.lists(arrays, min_size=1, max_size=4), st.sampled_from(COMBINES))
def test_combine_matches_numpy(responses, how):
    stack = np.stack(responses)
    expected = {
        "magnitude": np.sqrt((stack**2).sum(0)),
        "max": stack.max(0), "min": stack.min(0), "sum": stack.sum(0), "mean": stack.mean(0),
        "stack": np.moveaxis(stack, 0, -1),
    }[how]
    np.testing.assert_allclose(combine(responses, how), expected, rtol=1e-12, atol=1e-9)
    assert all(r is not combine(responses, how) for r in responses)


def test_combine_dtypes_and_errors():
    f32 = [np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)]
    assert combine(f32, "magnitude").dtype == np.float32
    assert combine([np.ones((2, 2), np.uint8)] * 2, "sum").dtype == np.float64
    with pytest.raises(KernelError, match="combine must be one of"):
        combine(f32, "avg")
    with pytest.raises(ValueError, match="same shape"):
        combine([np.ones(2), np.ones(3)], "max")
    with pytest.raises(ValueError, match="at least one"):
        combine([], "max")


# --- rotation, describe ---------------------------------------------------------------------


@given(st.integers(1, 3), st.integers(0, 7))
def test_two_45_degree_steps_are_one_quarter_turn(radius, turns):
    n = 2 * radius + 1
    m = np.arange(n * n, dtype=float).reshape(n, n)
    once = rotate_matrix(m, 45 * turns)
    np.testing.assert_array_equal(rotate_matrix(rotate_matrix(m, 45 * turns), 90),
                                  rotate_matrix(rotate_matrix(once, 45), 45))
    np.testing.assert_array_equal(rotate_matrix(m, 360), m)


def test_rotation_limits():
    with pytest.raises(KernelError, match="odd-sized"):
        rotate_matrix(np.ones((4, 4)), 45)
    with pytest.raises(KernelError, match="square"):
        rotate_matrix(np.ones((3, 5)), 90)
    np.testing.assert_array_equal(rotate_matrix(np.arange(6.0).reshape(2, 3), 180),
                                  np.arange(6.0)[::-1].reshape(2, 3))


@pytest.mark.parametrize("name", ["sobel-x", "gaussian-blur", "box-blur", "gaussian:sigma=2"])
def test_separable_factors_rebuild_the_weights(name):
    weights = resolve(name).weights
    col, row = separable_factors(weights)
    np.testing.assert_allclose(np.outer(col, row), weights, atol=1e-15)


def test_describe():
    d = describe(resolve("sobel-x"))
    assert d["separable"] == {"column": [1, 2, 1], "row": [-1, 0, 1]}
    assert (d["sum"], d["rank"], d["anchor"], d["parameters"]) == (0, 1, [1, 1], 9)
    assert describe(resolve("laplacian"))["separable"] is None
    bank = describe(resolve("sobel"))
    assert bank["combine"] == "magnitude" and len(bank["weights"]) == 2
    assert bank["parameters"] == 18
    multi = describe(Kernel("m", np.stack([np.eye(2), 2 * np.eye(2)], axis=-1), bias=1))
    assert multi["weights"] == [[[1, 0], [0, 1]], [[2, 0], [0, 2]]]
    assert multi["rank"] == [2, 2] and multi["parameters"] == 9


@pytest.mark.parametrize(("spec", "rows"), [
    ("0 \u22121 0; \u22121 4 \u22121", [[0, -1, 0], [-1, 4, -1]]),
    ("\u22121/2", [[-0.5]]),
    ("1_000 2", [[1000, 2]]),
    ("1e-400 1", [[0, 1]]),
])
def test_inline_numbers_as_people_write_them(spec, rows):
    assert resolve(spec).matrix.tolist() == rows


def test_family_parameters_with_a_unicode_minus():
    with pytest.raises(KernelError, match=r"sigma must be >= 0.01, got \u22121"):
        resolve("gaussian:sigma=\u22121")
    assert resolve("motion:length=3,angle=\u221245").shape == (3, 3)


def test_huge_numbers_in_code():
    with pytest.raises(KernelError, match=r"scale must be a finite number"):
        Kernel("k", [[1]], scale=10**400)
    message = r"bad parameters 'size=1000000000\S*… for box: size must be a finite number"
    with pytest.raises(KernelError, match=message):
        make("box", {"size": 10**400})


@pytest.mark.parametrize("scale", [1.0, 2.0**-60, 1e-15, 1e-200, 1e30, 1e200])
@pytest.mark.parametrize("spec", ["gaussian:sigma=1", "gaussian:sigma=4", "box-blur", "sobel-x"])
def test_separable_factors_are_scale_invariant(spec, scale):
    # One eps-relative tolerance (describe.rtol): tiny or huge weights split the same way.
    w = resolve(spec).weights * scale
    col, row = separable_factors(w)
    np.testing.assert_allclose(np.outer(col, row), w, rtol=1e-12, atol=0)
    if abs(w.sum()) > 0 and spec.startswith("gaussian"):
        # Non-integer factors of a non-zero-sum kernel share the sum equally.
        assert col.sum() == pytest.approx(row.sum(), rel=1e-12)
    if scale > 1e38:  # a Kernel refuses weights beyond float32 (issue 14, item 19)
        return
    info = describe(resolve(spec) if scale == 1 else Kernel("k", w))
    assert info["rank"] == 1 and info["separable"] is not None


def test_tiny_weights_are_shown_not_rounded_to_zero():
    info = describe(Kernel("tiny", [[1e-13, -2e-13, 1e-13]]))
    assert info["weights"] == [[1e-13, -2e-13, 1e-13]] and info["sum"] == 0.0
    assert describe(Kernel("k", [[1e-13, 1e-13]]))["sum"] == 2e-13
    assert separable_factors(np.eye(3) * 1e-300) is None
