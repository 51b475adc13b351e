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
