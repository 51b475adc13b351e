"""Executors that run the per-file job over many inputs, and :func:`run`.

The inputs run in this process, or in a pool of worker processes that end
with their parent and clean up after a signal.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from imgconv.batch.job import process, remove_stale_temporary_files, remove_temporary_files
from imgconv.batch.tasks import STDIO, Options, Result, Status, Task, output_key

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from imgconv.prefetch import Prefetch

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs a function over items and yields results as they complete (in any order).

    ``lost(item, reason)`` makes the result for an item whose run was lost (a
    worker process died); an executor calls it instead of raising.
    """

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], lost: Callable[[T, str], R]
    ) -> Iterator[R]: ...


class SerialExecutor:
    """In this process, one at a time."""

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], lost: Callable[[T, str], R]
    ) -> Iterator[R]:
        for item in items:
            yield fn(item)


WORKER_DIED = "a worker process died while filtering it (killed, out of memory, or crashed)"


class ProcessExecutor:
    """A pool of worker processes; at most ``jobs * 2`` tasks are in flight.

    If a worker dies, the pool cannot say which file it had, so every file in
    flight is run again in a new pool; a file in flight at two deaths is
    reported lost. A crashing file thus fails alone, and the batch goes on.
    """

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs
        self.worker_died = False

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], lost: Callable[[T, str], R]
    ) -> Iterator[R]:
        # multiprocessing costs ~30 ms to import: only runs with several jobs pay it
        from concurrent.futures import ProcessPoolExecutor

        queue = list(reversed(range(len(items))))
        deaths = [0] * len(items)
        while queue:
            with ProcessPoolExecutor(max_workers=self.jobs, initializer=_worker_init) as pool:
                yield from self._drain(pool, fn, items, queue, deaths, lost)

    def _drain(
        self, pool: ProcessPoolExecutor, fn: Callable[[T], R], items: Sequence[T],
        queue: list[int], deaths: list[int], lost: Callable[[T, str], R],
    ) -> Iterator[R]:
        from concurrent.futures.process import BrokenProcessPool

        pending: dict[Future[R], int] = {}
        try:
            while queue or pending:
                broken = False
                while queue and len(pending) < self.jobs * 2:
                    index = queue.pop()
                    try:
                        pending[pool.submit(fn, items[index])] = index
                    except BrokenProcessPool:  # a worker died since the last wait
                        # counted as a death too, so a pool that cannot start ends
                        deaths[index] += 1
                        if deaths[index] >= 2:
                            yield lost(items[index], WORKER_DIED)
                        else:
                            queue.append(index)
                        broken = True
                        break
                done: set[Future[R]] = set()
                if not broken:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
                if broken:
                    self.worker_died = True
                    for future, index in pending.items():
                        if future.done() and future.exception() is None:
                            yield future.result()
                            continue
                        deaths[index] += 1
                        if deaths[index] >= 2:
                            yield lost(items[index], WORKER_DIED)
                        else:
                            queue.append(index)  # again, first, in the next pool
                    return
                for future in done:
                    pending.pop(future)
                    yield future.result()
        except BaseException:
            # Ctrl-C or an error: stop the workers now rather than after their current
            # and queued files. SIGTERM makes each raise KeyboardInterrupt, so its
            # write_atomic removes its temporary file before the process exits.
            for process in getattr(pool, "_processes", {}).values():
                process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


#: True in a worker process while it filters a file (see :func:`_interrupt`).
_in_job = False
#: True in a worker process once :func:`_interrupt` has raised KeyboardInterrupt.
_stopping = False


def _interrupt(signum: int, frame: Any) -> None:
    """A worker's SIGTERM handler: stop cleanly, whatever the worker is doing.

    While filtering a file, raise KeyboardInterrupt so that ``write_atomic``
    removes its temporary file before the worker exits. Anywhere else (waiting
    for work, or inside the pool's own queue code, whose locks a raised
    exception can leave held, hanging the pool's shutdown), exit at once.
    Signals after the first are ignored: several come at once (SIGHUP or Ctrl-C
    to the process group, then the main process's SIGTERM; the parent's death
    seen twice), and a second KeyboardInterrupt raised inside ``write_atomic``'s
    cleanup would skip the removal of its temporary file.
    """
    global _stopping
    if _stopping:
        return
    if _in_job:
        _stopping = True
        raise KeyboardInterrupt
    _exit(128 + signum)


def _exit(code: int) -> None:
    """End a worker at once, removing the compiled path's temporary folder if it made one.

    (``os._exit`` skips the finalizer that would remove it.)
    """
    if "imgconv.core.jit" in sys.modules:
        from imgconv.core import jit

        jit.remove_fallback_dir()
    os._exit(code)


def _worker_init() -> None:
    import signal

    # worker processes already fill the cores: one core thread each, unless the user says
    # otherwise with IMGCONV_THREADS (or Options.threads)
    os.environ.setdefault("IMGCONV_THREADS", "1")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # Ctrl-C reaches the whole process group
    if hasattr(signal, "SIGHUP"):  # a closed terminal: as SIGTERM
        signal.signal(signal.SIGHUP, _interrupt)
    _end_with_parent()


#: How often a worker looks whether the process that started it is still there, in seconds.
PARENT_POLL_SECONDS = 0.5


def _end_with_parent() -> None:
    """Make this worker end (as on SIGTERM: its temporary file removed) when its parent does.

    A killed main process (SIGKILL, the OOM killer) can clean up nothing
    itself; its workers would go on writing, then wait for work forever. Linux
    sends SIGTERM at the parent's death (prctl PR_SET_PDEATHSIG); elsewhere,
    and as a second line, a thread polls the parent's pid.
    """
    import signal
    import threading

    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent,), name="imgconv-parent-watch",
                     daemon=True).start()


def _watch_parent(parent: int) -> None:
    import signal

    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread by _interrupt


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on macOS or Windows
        return os.cpu_count() or 1


def make_executor(jobs: int, tasks: int) -> Executor:
    """At most one worker per task and per CPU: each worker already keeps a core busy (one
    core thread), so more would only share the cores and add their memory (~30 MB each)."""
    jobs = max(1, min(jobs, tasks, available_cpus()))
    return SerialExecutor() if jobs == 1 else ProcessExecutor(jobs)


class _Job:
    """A picklable callable for executors: one task with the run's options."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.parent = os.getpid()

    def __call__(self, task: Task) -> Result:
        global _in_job
        _in_job = True
        try:
            result = process(task, self.options)
            _in_job = False  # not in a finally: a SIGTERM there would escape the except
            return result
        except KeyboardInterrupt:
            # in a worker process: the temporary file is already gone (write_atomic's
            # finally ran); exit instead of taking the next queued file
            if os.getpid() != self.parent:
                _exit(130)
            raise


def run(
    tasks: Sequence[Task],
    options: Options,
    *,
    executor: Executor | None = None,
    stdin: bytes | None = None,
    on_result: Callable[[Result], None] | None = None,
    prefetch: Prefetch | None = None,
) -> list[Result]:
    """Process every task; results in completion order. Duplicate targets fail after the first.

    ``prefetch`` is a :class:`~imgconv.prefetch.Prefetch` of an input, which
    is then processed in this process (a run of one file).
    """
    results: list[Result] = []
    seen: dict[object, str] = {}
    runnable: list[Task] = []
    remove_stale_temporary_files(tasks)
    for task in tasks:
        key = task.target if task.target == STDIO else output_key(task.target)
        if key in seen and task.target != STDIO:
            clash = Result(task.source.path, task.target, Status.FAILED,
                           f"{task.source.path}: same output {task.target} as {seen[key]}")
            results.append(clash)
            if on_result:
                on_result(clash)
            continue
        seen[key] = task.source.path
        runnable.append(task)
    if (stdin is not None or prefetch is not None
            or any(t.source.path == STDIO or t.target == STDIO for t in runnable)):
        outcomes: Iterable[Result] = (
            process(t, options, stdin if t.source.path == STDIO else None, prefetch)
            for t in runnable)
    else:
        outcomes = (executor or SerialExecutor()).map_unordered(_Job(options), runnable, _lost)
    try:
        for result in outcomes:
            results.append(result)
            if on_result:
                on_result(result)
    finally:
        # now, not when the traceback lets go of it: an executor's cleanup (a cluster's
        # tasks cancelled) runs as ``on_result`` raises or Ctrl-C comes
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()
    if getattr(executor, "worker_died", False):
        remove_temporary_files(runnable)
    return results


def _lost(task: Task, reason: str) -> Result:
    return Result(task.source.path, task.target, Status.FAILED,
                  f"{task.source.path}: {reason}")
