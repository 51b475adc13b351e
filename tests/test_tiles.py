"""Padder: any window of the padded plane, without materialising the plane.

The reference pads with :func:`reference.extend_index`, one place at a time.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from reference import extend_index

from imgconv.core.geometry import Geometry
from imgconv.core.tiles import Padder

MODES = ("reflect", "mirror", "nearest", "wrap", "constant")


def padded_reference(plane, top, left, rows, cols, mode, cval):
    h, w = plane.shape
    out = np.empty((rows, cols))
    for i in range(rows):
        for j in range(cols):
            si, sj = extend_index(i - top, h, mode), extend_index(j - left, w, mode)
            out[i, j] = cval if si is None or sj is None else plane[si, sj]
    return out


@given(
    h=st.integers(1, 6), w=st.integers(1, 6),
    kh=st.integers(1, 5), kw=st.integers(1, 5),
    pads=st.tuples(*[st.integers(0, 7)] * 4),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    mode=st.sampled_from(MODES),
    window=st.tuples(*[st.floats(0, 1)] * 4),
)
def test_fill_writes_any_window_of_the_padded_plane(h, w, kh, kw, pads, stride, mode, window):
    plane = np.arange(1, h * w + 1, dtype=np.uint8).reshape(h, w)
    geom = Geometry((h, w), (kh, kw), pads, stride, (1, 1))
    oh, ow = geom.out_shape
    if oh <= 0 or ow <= 0:
        return
    padder = Padder(plane, geom, mode, -5.0)
    expected = padded_reference(plane, pads[0], pads[2], padder.rows_total, padder.width,
                                mode, -5.0)
    # a window of rows [p0, p0 + count) and columns [q0, q1)
    p0 = int(window[0] * (padder.rows_total - 1))
    count = 1 + int(window[1] * (padder.rows_total - p0 - 1))
    q0 = int(window[2] * (padder.width - 1))
    q1 = q0 + 1 + int(window[3] * (padder.width - q0 - 1))
    tile = np.full((count + 2, q1 - q0 + 3), np.nan, np.float32)
    padder.fill(tile, p0, count, q0, q1)
    np.testing.assert_array_equal(tile[:count, : q1 - q0], expected[p0 : p0 + count, q0:q1])
    # nothing outside the window is touched
    assert np.isnan(tile[count:]).all() and np.isnan(tile[:, q1 - q0 :]).all()


def test_fill_defaults_to_the_full_width():
    plane = np.arange(12, dtype=np.float32).reshape(3, 4)
    geom = Geometry((3, 4), (3, 3), (1, 1, 2, 1), (1, 1), (1, 1))
    padder = Padder(plane, geom, "reflect", 0.0)
    tile = np.empty((padder.rows_total, padder.width), np.float32)
    padder.fill(tile, 0, padder.rows_total)
    np.testing.assert_array_equal(
        tile, padded_reference(plane, 1, 2, padder.rows_total, padder.width, "reflect", 0.0))
