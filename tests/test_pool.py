"""pool and activate against loop references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import pool_loop

import imgconv


@given(
    h=st.integers(1, 9), w=st.integers(1, 9),
    size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    op=st.sampled_from(["max", "avg"]),
    channels=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**16),
)
def test_pool_matches_loop(h, w, size, stride, op, channels, seed):
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    image = rng.standard_normal(shape)
    if size[0] > h or size[1] > w:
        with pytest.raises(ValueError, match="pool size"):
            imgconv.pool(image, size, stride=stride, op=op)
        return
    actual = imgconv.pool(image, size, stride=stride, op=op)
    s = size if stride is None else stride
    if channels is None:
        expected = pool_loop(image, size, s, op)
    else:
        expected = np.stack([pool_loop(image[:, :, c], size, s, op) for c in range(channels)], -1)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


def test_pool_hand_computed():
    image = np.arange(20, dtype=np.uint8).reshape(4, 5)
    out = imgconv.pool(image, 2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[6, 8], [16, 18]])
    np.testing.assert_array_equal(imgconv.pool(image, (2, 3), stride=(2, 2), op="avg"),
                                  [[3.5, 5.5], [13.5, 15.5]])
    np.testing.assert_array_equal(imgconv.pool(image, 3, stride=1)[:, -1], [14, 19])


def test_pool_does_not_modify_input():
    image = np.arange(16.0).reshape(4, 4)
    imgconv.pool(image, 2)
    np.testing.assert_array_equal(image, np.arange(16.0).reshape(4, 4))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("relu", [[0.0, 0.0, 3.0]]), ("abs", [[2.0, 0.0, 3.0]]), ("none", [[-2.0, 0.0, 3.0]])],
)
def test_activate(kind, expected):
    x = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_array_equal(imgconv.activate(x, kind), expected)
    np.testing.assert_array_equal(x, [[-2.0, 0.0, 3.0]])


def test_activate_integer_input_does_not_wrap():
    out = imgconv.activate(np.array([[-5, 7]], dtype=np.int8), "abs")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[5.0, 7.0]])


def test_conv_relu_maxpool_layer_shape():
    image = np.random.default_rng(1).random((32, 30, 3))
    layer = imgconv.correlate(image, np.ones((5, 5, 3)), padding="valid", stride=1)
    assert layer.shape == (28, 26)   # (32 - 5 + 0)/1 + 1, (30 - 5)/1 + 1
    out = imgconv.pool(imgconv.activate(layer, "relu"), 2)
    assert out.shape == (14, 13)


@given(
    h=st.integers(1, 8), w=st.integers(1, 8),
    size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    op=st.sampled_from(["max", "avg"]),
    ceil_mode=st.booleans(), count_include_pad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pool_padding_dilation_ceil_match_loop(h, w, size, stride, pad, dilation, op,
                                               ceil_mode, count_include_pad, seed):
    image = np.random.default_rng(seed).standard_normal((h, w, 2))
    if op == "avg":
        dilation = (1, 1)
    pad = (min(pad[0], size[0] // 2), min(pad[1], size[1] // 2))
    kwargs = dict(stride=stride, op=op, padding=pad, dilation=dilation, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad)
    try:
        actual = imgconv.pool(image, size, **kwargs)
    except ValueError as exc:
        assert "larger than the image" in str(exc)
        return
    expected = np.stack([pool_loop(image[:, :, c], size, stride, op, pad, dilation, ceil_mode,
                                   count_include_pad) for c in range(2)], -1)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


def test_pool_ceil_mode_keeps_the_partial_window():
    x = np.arange(25.0).reshape(5, 5)
    assert imgconv.pool(x, 2).shape == (2, 2)
    out = imgconv.pool(x, 2, ceil_mode=True)
    np.testing.assert_array_equal(out, [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    # avg: the partial window divides by the places inside the (padded) image only
    np.testing.assert_array_equal(imgconv.pool(x, 2, op="avg", ceil_mode=True)[2], [
        (20 + 21) / 2, (22 + 23) / 2, 24])


def test_pool_padding_max_pads_with_minus_infinity():
    x = -np.ones((2, 2))
    np.testing.assert_array_equal(imgconv.pool(x, 2, stride=1, padding=1), -np.ones((3, 3)))
    # avg pads with zeros, which count by default, as in PyTorch
    avg = imgconv.pool(x, 2, stride=1, padding=1, op="avg")
    assert avg[0, 0] == -0.25 and avg[1, 1] == -1.0
    no_pad = imgconv.pool(x, 2, stride=1, padding=1, op="avg", count_include_pad=False)
    np.testing.assert_array_equal(no_pad, -np.ones((3, 3)))


def test_pool_dilation_spreads_max_taps():
    x = np.arange(25.0).reshape(5, 5)
    np.testing.assert_array_equal(imgconv.pool(x, 2, stride=1, dilation=2),
                                  x[2:, 2:])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"padding": 2}, "at most half the pool size"),
    ({"dilation": 2, "op": "avg"}, "max pooling only"),
    ({"padding": -1}, "pool padding must be >= 0"),
    ({"dilation": 0}, "pool dilation must be >= 1"),
])
def test_pool_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        imgconv.pool(np.ones((6, 6)), 2, **kwargs)


def _torch_pool(torch, x, size, stride, op, padding, dilation, ceil_mode, count_include_pad):
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 0)))[None]
    if op == "max":
        y = torch.nn.functional.max_pool2d(t, size, stride, padding, dilation,
                                           ceil_mode=ceil_mode)
    else:
        y = torch.nn.functional.avg_pool2d(t, size, stride, padding, ceil_mode=ceil_mode,
                                           count_include_pad=count_include_pad)
    return np.moveaxis(y[0].numpy(), 0, -1)


def test_pool_matches_torch():
    """max_pool2d and avg_pool2d on random cases (torch is optional: the loop test checks
    the same definitions without it)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(300):
        h, w = rng.integers(1, 12, 2)
        size = tuple(int(k) for k in rng.integers(1, 5, 2))
        stride = tuple(int(s) for s in rng.integers(1, 4, 2))
        pad = tuple(int(rng.integers(0, k // 2 + 1)) for k in size)
        op = ["max", "avg"][int(rng.integers(2))]
        dilation = (1, 1) if op == "avg" else tuple(int(d) for d in rng.integers(1, 3, 2))
        ceil_mode, include = bool(rng.integers(2)), bool(rng.integers(2))
        x = rng.standard_normal((h, w, 3)).astype(np.float32)
        try:
            ours = imgconv.pool(x, size, stride=stride, op=op, padding=pad, dilation=dilation,
                                ceil_mode=ceil_mode, count_include_pad=include)
        except ValueError:
            with pytest.raises(RuntimeError):
                _torch_pool(torch, x, size, stride, op, pad, dilation, ceil_mode, include)
            continue
        theirs = _torch_pool(torch, x, size, stride, op, pad, dilation, ceil_mode, include)
        assert ours.shape == theirs.shape, (h, w, size, stride, pad, dilation, ceil_mode)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)  # -inf where torch has it
        finite = np.isfinite(theirs)
        worst = max(worst, float(np.abs(ours[finite] - theirs[finite]).max(initial=0.0)))
    print(f"pool vs torch: largest |difference| {worst:.3g}")
    assert worst <= 1e-6
