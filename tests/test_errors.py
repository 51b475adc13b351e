"""Every bad argument raises ValueError or TypeError with a message naming it."""

from __future__ import annotations

import numpy as np
import pytest

import imgconv

IMAGE = np.zeros((5, 5))
K3 = np.ones((3, 3))


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"kernel": np.zeros((0, 3))}, ValueError, r"kernel must not be empty, got shape \(0, 3\)"),
        ({"kernel": [[1.0, np.nan]]}, ValueError, r"kernel must hold finite numbers, found nan"),
        ({"kernel": [[1.0], [np.inf]]}, ValueError, r"kernel must hold finite numbers, found inf"),
        ({"kernel": [1.0, 2.0]}, ValueError, r"kernel must be 2-D \(kh, kw\) or 3-D"),
        ({"kernel": [[1, 2], [3]]}, TypeError, r"kernel must be an array of real numbers"),
        ({"padding": "middle"}, ValueError, r"padding must be one of same, valid, full.*'middle'"),
        ({"padding": -1}, ValueError, r"padding amounts must be >= 0, got -1"),
        ({"padding": (1, 2, 3)}, ValueError, r"padding must be .*got 3 values"),
        ({"padding": 1.5}, TypeError, r"padding must be one of same"),
        ({"pad_mode": "bogus"}, ValueError,
         r"pad_mode must be one of reflect, mirror, nearest, wrap, constant .*'bogus'"),
        ({"pad_mode": 3}, TypeError, r"pad_mode must be a string"),
        ({"cval": np.nan}, ValueError, r"cval must be a finite number"),
        ({"stride": 0}, ValueError, r"stride must be >= 1, got 0"),
        ({"stride": (1, -2)}, ValueError, r"stride must be >= 1, got \(1, -2\)"),
        ({"stride": 1.5}, TypeError, r"stride must be an int or a pair of ints"),
        ({"dilation": 0}, ValueError, r"dilation must be >= 1, got 0"),
        ({"dilation": (1, 2, 3)}, TypeError, r"dilation must be an int or a pair"),
        ({"kernel": np.ones((7, 3)), "padding": "valid"}, ValueError,
         r"output would be empty: the dilated kernel extent \(7, 3\) is larger than the image"),
        ({"dilation": 3, "padding": "valid"}, ValueError, r"output would be empty"),
        ({"image": np.zeros(5)}, ValueError, r"image must be 2-D \(H, W\) or 3-D \(H, W, C\)"),
        ({"image": np.zeros((2, 2, 2, 2))}, ValueError, r"image must be 2-D"),
        ({"image": np.zeros((0, 4))}, ValueError, r"image must not be empty"),
        ({"image": np.zeros((3, 3), complex)}, TypeError, r"image must hold real numbers"),
        # issue 14, item 32: a complex kernel was made real (imaginary part dropped)
        ({"kernel": np.array([[1j]])}, TypeError,
         r"^kernel must hold real numbers, got dtype complex128$"),
        ({"kernel": [[1 + 0j, 2]]}, TypeError, r"^kernel must hold real numbers, got dtype"),
        ({"image": np.zeros((5, 5, 2)), "kernel": np.ones((3, 3, 3))}, ValueError,
         r"multi-channel filter of shape \(3, 3, 3\) needs an image with 3 channels"),
        ({"kernel": np.ones((3, 3, 3))}, ValueError, r"needs an image with 3 channels"),
    ],
    ids=lambda v: str(v)[:40] if not isinstance(v, dict) else ",".join(v),
)
@pytest.mark.parametrize("func", [imgconv.correlate, imgconv.convolve])
def test_bad_conv_arguments(func, kwargs, exc, message):
    args = {"image": IMAGE, "kernel": K3, **kwargs}
    with pytest.raises(exc, match=message):
        func(args.pop("image"), args.pop("kernel"), **args)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "message"),
    [
        ((6,), {}, ValueError, r"pool size \(6, 6\) is larger than the image \(5, 5\)"),
        ((0,), {}, ValueError, r"pool size must be >= 1, got 0"),
        ((2,), {"stride": 0}, ValueError, r"pool stride must be >= 1, got 0"),
        ((2,), {"op": "median"}, ValueError, r"op must be one of max, avg, got 'median'"),
        (("2",), {}, TypeError, r"pool size must be an int or a pair"),
    ],
)
def test_bad_pool_arguments(args, kwargs, exc, message):
    with pytest.raises(exc, match=message):
        imgconv.pool(IMAGE, *args, **kwargs)


def test_bad_activation():
    with pytest.raises(ValueError, match=r"activation must be one of none, relu, abs, got 'tanh'"):
        imgconv.activate(IMAGE, "tanh")
