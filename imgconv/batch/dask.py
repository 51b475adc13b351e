"""Batches on a Dask cluster: :class:`DaskExecutor` over a distributed ``Client``; :func:`connect`.

Every input becomes one task on the cluster's workers, which read the inputs
and write the outputs through paths they all see (a shared file system). The
tasks run :func:`imgconv.batch.process`, as the local pool's workers do, so the
outputs are the same bytes. Needs the ``scale`` extra (``pip install
'imgconv[scale]'``); nothing here imports dask until a cluster is asked for.

>>> from imgconv.batch.dask import parse_scheduler
>>> parse_scheduler("local:4"), parse_scheduler("tcp://10.0.0.5:8786")
(('', 4), ('tcp://10.0.0.5:8786', None))
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from imgconv.batch.tasks import STDIO, Result, Status, Task
from imgconv.errors import UsageError

if TYPE_CHECKING:
    from distributed import Client

T = TypeVar("T")
R = TypeVar("R")

#: The environment variable that names a scheduler when no option does.
SCHEDULER_ENV = "IMGCONV_SCHEDULER"
#: How long to wait for the scheduler to answer at the start, in seconds.
DEFAULT_TIMEOUT = 10.0
LOCAL = "local"

WORKERS_DIED = ("the workers that took it died, {n} times (killed, out of memory, or crashed); "
                "dask gave up on it")
SCHEDULER_LOST = ("not done: the connection to the scheduler was lost (rerun with "
                  "`skip_existing=True` to finish the batch)")
SCALE_EXTRA = "pip install 'imgconv[scale]'"


def parse_scheduler(text: str) -> tuple[str, int | None]:
    """``(address, None)`` for a scheduler's address; ``("", N)`` for ``local`` or ``local:N``.

    ``local`` alone is a worker per CPU.
    """
    spec = text.strip()
    match = re.fullmatch(r"local(?::(\d+))?", spec)
    if match:
        from imgconv.batch.workers import available_cpus

        n = int(match[1]) if match[1] else available_cpus()
        if n < 1:
            raise UsageError(f"`scheduler={text}`: a local cluster needs >= 1 worker, got {n}")
        return "", n
    if not spec or spec.startswith(LOCAL + ":"):
        raise UsageError(f"`scheduler` {text!r}: give an address such as tcp://HOST:8786, "
                         "local, or local:N (N worker processes on this machine)")
    return spec, None


def read_scheduler_file(path: str) -> str:
    """The address in the JSON scheduler file a Dask scheduler writes (its scheduler-file)."""
    try:
        with open(path, encoding="utf-8") as stream:
            doc = json.load(stream)
    except OSError as exc:
        raise UsageError(f"`scheduler_file` {path}: cannot read it ({exc.strerror or exc})") \
            from None
    except ValueError as exc:
        raise UsageError(f"`scheduler_file` {path}: not a scheduler file ({exc})") from None
    address = doc.get("address") if isinstance(doc, dict) else None
    if not isinstance(address, str) or not address:
        raise UsageError(f"`scheduler_file` {path}: has no scheduler address")
    return address


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UsageError(f"a Dask scheduler needs the scale extra: {SCALE_EXTRA}") from None
    return distributed


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    *,
    scheduler_file: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    quiet_logs: bool = True,
) -> Iterator[DaskExecutor]:
    """A :class:`DaskExecutor` on the scheduler named, closed (and a local cluster shut down) after.

    ``scheduler`` is an address (``tcp://HOST:8786``), ``local`` or ``local:N``
    (a ``LocalCluster`` of N worker processes on 127.0.0.1, started here);
    else ``scheduler_file``, else the environment variable ``IMGCONV_SCHEDULER``.
    A scheduler that does not answer within ``timeout`` seconds raises
    :class:`~imgconv.errors.UsageError`. ``quiet_logs`` keeps distributed's
    log lines (a lost connection's tracebacks) off standard error.
    """
    if scheduler is not None and scheduler_file is not None:
        raise UsageError("give one of `scheduler` and `scheduler_file`, not both")
    if not timeout > 0:
        raise UsageError(f"`scheduler_timeout` must be > 0 seconds, got {timeout:g}")
    if scheduler is None and scheduler_file is None:
        scheduler = os.environ.get(SCHEDULER_ENV) or None
        if scheduler is None:
            raise UsageError(f"no scheduler: give `scheduler` or `scheduler_file`, or set "
                             f"{SCHEDULER_ENV}")
    address, local = (read_scheduler_file(scheduler_file), None) if scheduler_file is not None \
        else parse_scheduler(scheduler or "")
    distributed = _import_distributed()
    if quiet_logs:
        import logging

        logging.getLogger("distributed").setLevel(logging.CRITICAL)
    with contextlib.ExitStack() as stack:
        if local is not None:
            cluster = stack.enter_context(_local_cluster(distributed, local, quiet_logs))
            address = cluster.scheduler_address
        try:
            client = distributed.Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            cause = _first_line(exc)
            if cause.startswith("Timed out"):  # it says the address and the time again
                cause = "is it running, and is the address right?"
            raise UsageError(f"cannot reach the scheduler at {address} within {timeout:g} s "
                             f"(`scheduler_timeout`): {cause}") from None
        except ValueError as exc:  # an address distributed cannot parse
            raise UsageError(f"`scheduler` {address!r}: {_first_line(exc)}") from None
        stack.callback(_close, client)
        yield DaskExecutor(client)


def _local_cluster(distributed: Any, n: int, quiet_logs: bool) -> Any:
    import logging

    # core threads: the workers already fill the cores, one file each (as the local pool's)
    env = {"IMGCONV_THREADS": os.environ.get("IMGCONV_THREADS", "1")}
    return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None, env=env,
                                    silence_logs=logging.CRITICAL if quiet_logs else False,
                                    # its HTTP server (health, metrics), on a free port
                                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})


def _close(client: Any) -> None:
    # a client whose scheduler is gone would try to reconnect first: do not wait for that
    with contextlib.suppress(Exception):
        client.close(timeout=2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def describe(client: Client) -> list[str]:
    """The scheduler's address and its workers (name, threads, memory), a line each."""
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    lines = [f"scheduler {info.get('address', '?')}: "
             f"{len(workers)} worker(s)"]
    for address, worker in sorted(workers.items()):
        name = worker.get("name")
        named = f" ({name})" if name is not None and str(name) != address else ""
        memory = worker.get("memory_limit") or 0
        limit = f", {memory / 2**30:.1f} GiB" if memory else ""
        lines.append(f"  {address}{named}: {worker.get('nthreads', '?')} thread(s){limit}")
    return lines


class DaskExecutor:
    """Runs a batch's tasks on a Dask cluster through ``client`` (a ``distributed.Client``).

    An :class:`~imgconv.batch.Executor`: ``imgconv.batch.run(tasks, options,
    executor=DaskExecutor(client))``. Results come as the futures complete.

    - Before the first task, every worker is asked whether it can read the
      first input and write to its output's folder; if one cannot, raises
      :class:`~imgconv.errors.UsageError` (the paths must be shared).
    - A task whose worker dies runs again on another (dask's retries); after
      dask's allowed failures the input is reported failed through ``lost``.
    - A task that finds its output complete, written by an earlier attempt in
      this run (absent when the run began, the same bytes as it makes now),
      reports it written.
    - If the connection to the scheduler is lost, every input not done is
      reported through ``lost``; a rerun with ``skip_existing`` finishes.
    - An interrupted run (Ctrl-C, or the caller stops iterating) cancels the
      tasks not yet done.

    Each :class:`Result` records the worker that made it.
    """

    def __init__(self, client: Client) -> None:
        self.client: Any = client  # (distributed's futures and as_completed are untyped)
        self.worker_died = False
        self.scheduler_lost = False

    def describe(self) -> list[str]:
        return describe(self.client)

    def map_unordered(
        self, fn: Callable[[T], R], items: Sequence[T], lost: Callable[[T, str], R]
    ) -> Iterator[R]:
        if not items:
            return
        self._probe(items)
        before = self._workers()
        # absent now: if it exists when its task runs, an earlier attempt of this run made it
        absent = [isinstance(t, Task) and t.target != STDIO and not os.path.lexists(t.target)
                  for t in items]
        futures: list[Any] = self.client.map(
            partial(_attempt, fn), items, absent, pure=False, key=_keys(items))
        pending = {f.key: (f, i) for i, f in enumerate(futures)}
        completed = _import_distributed().as_completed(futures, loop=self.client.loop)
        del futures
        try:
            for future in completed:
                _, i = pending.pop(future.key)
                outcome = self._outcome(future, items[i], lost)
                future.release()  # the scheduler forgets the task now, not when gc finds it
                yield outcome
        finally:
            if pending:  # Ctrl-C, an error, or the caller stopped: nothing more is wanted
                with contextlib.suppress(Exception):
                    self.client.cancel([f for f, _ in pending.values()])
            if not self.scheduler_lost:
                with contextlib.suppress(Exception):
                    # a worker gone since the start may have left a temporary file
                    self.worker_died = self.worker_died or bool(before - self._workers())

    def _outcome(self, future: Any, item: T, lost: Callable[[T, str], R]) -> R:
        """The result of a completed future, or ``lost(item, why)``.

        A finished future's result may be gone meanwhile (its worker died):
        ``result()`` then waits for dask to make it again.
        """
        from distributed import KilledWorker

        try:
            result: R = future.result()
        except KilledWorker as exc:
            self.worker_died = True
            return lost(item, WORKERS_DIED.format(n=exc.allowed_failures + 1))
        except CancelledError as exc:
            if getattr(exc, "reason", None) != "scheduler-connection-lost":
                return lost(item, f"cancelled on the cluster ({_first_line(exc)})")
            self.scheduler_lost = True
            return lost(item, SCHEDULER_LOST)
        except Exception as exc:  # the job itself never raises: this is the cluster's
            return lost(item, f"failed on the cluster: {type(exc).__name__}: "
                              f"{_first_line(exc)}")
        return result

    def _workers(self) -> set[str]:
        return set(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def _probe(self, items: Sequence[T]) -> None:
        """Refuse to start if a worker cannot read the first input or write beside its output."""
        first = next((t for t in items if isinstance(t, Task) and t.target != STDIO
                      and t.source.path != STDIO and os.access(t.source.path, os.R_OK)
                      and os.path.isfile(t.source.path)), None)
        if first is None:  # nothing here can read an input either: each fails on its own
            return
        answers = self.client.run(_probe, first.source.path, str(Path(first.target).parent))
        for worker, problem in sorted(answers.items()):
            if problem:
                raise UsageError(f"worker {worker} {problem}: inputs and outputs must be paths "
                                 "every worker sees (a shared file system)")


def _keys(items: Sequence[Any]) -> list[str]:
    import uuid

    run = uuid.uuid4().hex[:12]
    names = [Path(t.source.path).name if isinstance(t, Task) else "item" for t in items]
    return [f"imgconv-{re.sub(r'[^A-Za-z0-9._-]', '_', name)[:40]}-{i}-{run}"
            for i, name in enumerate(names)]


def _worker_name() -> str | None:
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    # LocalCluster numbers its workers; dask-jobqueue and named dask workers name them
    return worker.name if isinstance(worker.name, str) else str(worker.address)


def _attempt(fn: Callable[[T], R], item: T, absent: bool) -> R:
    """On a worker: ``fn(item)``, with the worker's name recorded in the result."""
    if absent and isinstance(item, Task) and os.path.lexists(item.target):
        result: R = _written_earlier(fn, item)  # type: ignore[arg-type]
    else:
        result = fn(item)
    if isinstance(result, Result):
        result.worker = _worker_name()
    return result


def _written_earlier(fn: Callable[[Task], Any], task: Task) -> Any:
    """A task run again finds its output, absent when the run began: whose is it?

    An earlier attempt of this task made it if it holds the bytes this attempt
    makes (which are the same every time): the task is done. Otherwise it is
    another's, and the task runs as the first attempt would have (the output
    exists). The check is made beside the output, under a temporary file's
    name, so a run that removes killed writers' leftovers removes it too.
    """
    target = Path(task.target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".part",
                                dir=target.parent)
    os.close(fd)
    check = Path(name)
    check.unlink()  # process() writes it afresh, and refuses to replace it
    try:
        result = fn(replace(task, target=str(check)))
        if (isinstance(result, Result) and result.status == Status.WRITTEN
                and filecmp.cmp(check, target, shallow=False)):
            result.output = task.target
            return result
    except OSError:
        pass
    finally:
        check.unlink(missing_ok=True)
    return fn(task)


def _probe(path: str, folder: str) -> str | None:
    """On a worker: why it cannot read ``path`` or write in ``folder`` (None if it can)."""
    try:
        with open(path, "rb") as stream:
            stream.read(1)
    except OSError as exc:
        return f"cannot read the input {path} ({exc.strerror or exc})"
    try:
        os.makedirs(folder, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".imgconv-probe.", suffix=".part", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"cannot write to the output folder {folder} ({exc.strerror or exc})"
    return None
