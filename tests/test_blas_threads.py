"""BLAS runs on one thread inside imgconv's calls, and the caller's setting is kept (issue 19)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage as ndi
from test_conv import assert_matches
from threadpoolctl import ThreadpoolController, threadpool_limits

import imgconv
from imgconv.core import strategies, threads

controller = ThreadpoolController()
needs_blas = pytest.mark.skipif(not controller.select(user_api="blas").lib_controllers,
                                reason="numpy's BLAS is not one threadpoolctl knows")


def blas_threads() -> list[int]:
    return [lib.num_threads for lib in ThreadpoolController().select(user_api="blas")
            .lib_controllers]


def box15_with_spy(image, seen):
    """box 15x15 (separable's matrix products) into a float32 array, noting BLAS's threads."""
    kernel = np.ones((15, 15)) / 225
    out = np.empty(image.shape, np.float32)

    def post(tile):
        seen.append(tuple(blas_threads()))

    imgconv.core.correlate_into(image, kernel, out, post=post)
    return out, kernel


@needs_blas
@pytest.mark.parametrize("count", [1, 2])
def test_matrix_products_run_blas_on_one_thread_and_restore_the_callers(count, monkeypatch):
    monkeypatch.setattr(threads, "_blas_controller", None)  # looked up afresh
    image = np.random.default_rng(0).random((300, 400)).astype(np.float32)
    seen: list[tuple[int, ...]] = []
    with threadpool_limits(limits=2, user_api="blas"):
        threads.set_threads(count)
        try:
            out, kernel = box15_with_spy(image, seen)
        finally:
            threads.set_threads(None)
        assert blas_threads() == [2] * len(blas_threads())
    assert seen and all(set(s) == {1} for s in seen)
    assert_matches(out, ndi.correlate(image.astype(np.float64), kernel, mode="reflect"),
                   np.float32, kernel, image)


@needs_blas
def test_the_callers_own_limit_is_kept():
    image = np.random.default_rng(1).random((200, 300)).astype(np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        box15_with_spy(image, [])
        assert set(blas_threads()) == {1}
    before = blas_threads()
    box15_with_spy(image, [])
    assert blas_threads() == before


@needs_blas
def test_kernels_without_products_leave_blas_alone():
    seen: list[tuple[int, ...]] = []
    image = np.random.default_rng(2).random((300, 400)).astype(np.float32)
    out = np.empty(image.shape, np.float32)
    with threadpool_limits(limits=2, user_api="blas"):
        imgconv.core.correlate_into(image, np.ones((3, 3)) / 9, out,
                                    post=lambda t: seen.append(tuple(blas_threads())))
    assert seen and all(set(s) == {2} for s in seen)


@needs_blas
def test_concurrent_calls_restore_the_setting_once_all_are_done():
    image = np.random.default_rng(3).random((400, 500)).astype(np.float32)
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def worker():
        try:
            start.wait()
            for _ in range(3):
                box15_with_spy(image, [])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with threadpool_limits(limits=2, user_api="blas"):
        workers = [threading.Thread(target=worker) for _ in range(2)]
        for t in workers:
            t.start()
        start.wait()
        for t in workers:
            t.join()
        assert not errors
        assert blas_threads() == [2] * len(blas_threads())
    assert threads._blas_depth == 0


def test_an_error_inside_restores_the_setting(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    image = np.random.default_rng(4).random((300, 400)).astype(np.float32)
    before = blas_threads()
    monkeypatch.setattr(strategies, "_gemm_columns", broken)
    with pytest.raises(RuntimeError, match="boom"):
        imgconv.correlate(image, np.ones((15, 15)) / 225)
    assert blas_threads() == before and threads._blas_depth == 0
