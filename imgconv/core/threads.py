"""How many threads the core uses, and the pool that runs row bands on them.

numpy's element-wise loops and scipy.fft release the GIL, so row bands of one
image run truly in parallel on plain Python threads. The count is, in order of
precedence: :func:`set_threads` (what the command line's threads option calls), the
environment variable ``IMGCONV_THREADS``, then every core this process may use.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

from imgconv.core.env import getenv

T = TypeVar("T")
R = TypeVar("R")

ENV_VAR = "IMGCONV_THREADS"

_lock = threading.Lock()
_requested: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _check_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number of threads >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1 thread, got {value}")
    return value


def set_threads(n: int | None) -> None:
    """Use ``n`` threads for every later call (``None``: back to the default).

    Results do not depend on the thread count: the row tiles are the same, only
    which thread computes each one changes.

    >>> set_threads(1); get_threads()
    1
    >>> set_threads(None)
    """
    global _requested
    _requested = None if n is None else _check_count(n, "threads")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def get_threads() -> int:
    """The thread count in force: :func:`set_threads`, else ``IMGCONV_THREADS``, else all cores.

    An ``IMGCONV_THREADS`` that is not a whole number >= 1 raises ``ValueError``
    naming the variable, rather than being silently ignored.
    """
    if _requested is not None:
        return _requested
    env = getenv(ENV_VAR).strip()
    if env:
        try:
            count = int(env)
        except ValueError:
            raise ValueError(
                f"{ENV_VAR} must be a whole number of threads >= 1, got {env!r}"
            ) from None
        return _check_count(count, ENV_VAR)
    return available_cores()


def run_parallel(func: Callable[[T], R], items: Sequence[T], threads: int) -> list[R]:
    """``[func(item) for item in items]``, on up to ``threads`` threads, in order."""
    if threads <= 1 or len(items) <= 1:
        return [func(item) for item in items]
    global _pool, _pool_size
    with _lock:
        # One long-lived pool, rebuilt only when the count changes: starting
        # threads per call would cost more than a small image's whole filter.
        # The work is queued under the lock, so a pool is never shut down
        # between a call taking it and queueing on it (another Python thread
        # may change the count at any time); a shut-down pool still runs what
        # was queued before.
        if _pool is None or _pool_size != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imgconv")
            _pool_size = threads
        futures = [_pool.submit(func, item) for item in items]
    # every item finishes before an error is raised: none still runs after the call
    wait(futures)
    return [f.result() for f in futures]


_blas_lock = threading.Lock()
_blas_depth = 0
_blas_limiter: Any = None
_blas_controller: Any = None


@contextlib.contextmanager
def blas_single_threaded() -> Iterator[None]:
    """BLAS (numpy's ``matmul``) on one thread of its own while the block runs.

    ``separable``'s matrix products run on imgconv's threads (or, with one
    thread, on the caller's): OpenBLAS would start its own threads inside each
    of them, one per core, which then fight imgconv's and any other process's
    for the cores. On 4000x6000 float32 with box 15x15 (issue 19) that took
    77 ms against 42 with ``OPENBLAS_NUM_THREADS=1``, and 299 against 60 with
    another busy process. threadpoolctl sets the BLAS libraries numpy loaded
    to one thread on entry and restores the caller's count on exit. The
    setting is process-wide, so concurrent calls from several threads share
    one entry: the first saves and limits, the last restores, and the
    caller's setting is back as it was once no imgconv call is running.
    The libraries are looked up once, the first time (about a millisecond);
    setting and restoring costs about 6 us a call.
    """
    global _blas_depth, _blas_limiter, _blas_controller
    with _blas_lock:
        if _blas_depth == 0:
            if _blas_controller is None:
                from threadpoolctl import ThreadpoolController

                _blas_controller = ThreadpoolController()
            _blas_limiter = _blas_controller.limit(limits=1, user_api="blas")
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                limiter, _blas_limiter = _blas_limiter, None
                limiter.restore_original_limits()
