"""Kernels of hundreds of taps a side: exact, and priced without factoring them in full.

Splitting a full-rank 101x101 kernel exactly (and building its programs) took 43 s
of Python in the cost model, and a 1001x1001 one minutes, before the FFT, which
the model then chose, filtered in a fraction of a second.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

import imgconv
from imgconv.core import strategies, taps
from imgconv.core.geometry import Geometry


@pytest.fixture
def no_full_split(monkeypatch):
    """Fail if anything splits or programs a kernel over LARGE_TAPS taps in full."""
    def refuse(name, real):
        def guarded(kernel, *args, **kwargs):
            if np.asarray(kernel).size > strategies.LARGE_TAPS:
                raise AssertionError(f"{name} of a {np.asarray(kernel).shape} kernel")
            return real(kernel, *args, **kwargs)
        return guarded

    monkeypatch.setattr(taps, "low_rank", refuse("low_rank", taps.low_rank))
    monkeypatch.setattr(strategies, "direct_program",
                        refuse("direct_program", strategies.direct_program))
    taps._low_rank_cached.cache_clear()
    strategies._choice.cache_clear()
    yield
    taps._low_rank_cached.cache_clear()
    strategies._choice.cache_clear()


def test_a_large_full_rank_kernel_is_priced_without_its_split(no_full_split):
    kernel = np.random.default_rng(0).standard_normal((61, 61))
    geom = Geometry((80, 90), (61, 61), (30, 30, 30, 30), (1, 1), (1, 1))
    found = strategies.costs(kernel, geom)
    assert found["separable"] == float("inf")
    assert min(found, key=found.__getitem__) == "fft"


def test_rank_at_most_agrees_with_the_split():
    rng = np.random.default_rng(1)
    for rank in (1, 2, 3, 5):
        kernel = sum(np.outer(rng.standard_normal(40), rng.standard_normal(40))
                     for _ in range(rank))
        assert taps.rank_at_most(kernel, 4) == (len(taps.low_rank(kernel)) <= 4)


@pytest.mark.parametrize("kind", ["random", "rank 1", "rank 2", "sparse"])
def test_large_kernels_match_scipy(kind):
    rng = np.random.default_rng(2)
    n = 45
    if kind == "random":
        kernel = rng.standard_normal((n, n))
    elif kind == "rank 1":
        kernel = np.outer(np.hanning(n), np.hanning(n))
    elif kind == "rank 2":
        kernel = np.outer(np.hanning(n), np.ones(n)) - np.outer(np.ones(n), np.hanning(n))
    else:  # a motion blur: one line of taps, the direct sum's case
        kernel = np.zeros((n, n))
        kernel[n // 2] = 1 / n
    image = rng.standard_normal((70, 50)).astype(np.float32)
    ours = imgconv.correlate(image, kernel)
    theirs = ndi.correlate(image.astype(np.float64), kernel, mode="reflect")
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * max(1.0, np.abs(theirs).max()))
