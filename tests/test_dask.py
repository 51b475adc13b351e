"""imgconv.batch.dask: batches on a Dask cluster, and their faults (issue 17).

Every service is a real process on 127.0.0.1, started and stopped here, and
every wait has a deadline: a LocalCluster (worker processes), a ``dask
scheduler`` with two ``dask worker`` processes found through a scheduler file,
and the ``imgconv`` script itself when a signal must reach it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

distributed = pytest.importorskip("distributed", reason="needs the scale extra")
import cloudpickle  # noqa: E402 (after the skip: dask's dependency)
import dask  # noqa: E402

from imgconv import batch  # noqa: E402
from imgconv.batch import workers  # noqa: E402
from imgconv.batch.dask import DaskExecutor, parse_scheduler  # noqa: E402
from imgconv.cli import app  # noqa: E402
from imgconv.errors import UsageError  # noqa: E402
from imgconv.pipeline import Pipeline  # noqa: E402

# the workers cannot import this file: what it sends them travels by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

runner = CliRunner()
BIN = Path(sys.executable).parent
DEADLINE = 30.0  # seconds: no wait here is longer


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def make_inputs(folder: Path, n: int = 20) -> list[Path]:
    """``n`` small images of three kinds (gray PNG, RGB JPEG, RGBA PNG), all different."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        size = 12 + i
        if i % 3 == 0:
            path = folder / f"{i:02d}.png"
            Image.fromarray(rng.integers(0, 255, (size, size + 3), dtype=np.uint8)).save(path)
        elif i % 3 == 1:
            path = folder / f"{i:02d}.jpg"
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        else:
            path = folder / f"{i:02d}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 4), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.part"))


def reference(tmp_path: Path, inputs: Path) -> dict[str, bytes]:
    """The outputs of ``--jobs 2``: what every cluster run must write, byte for byte."""
    out = tmp_path / "reference"
    result = invoke("apply", inputs, "-k", "sobel", "--out-dir", out, "--jobs", "2", "-q")
    assert result.exit_code == 0, result.stderr
    return files(out)


def plan(inputs: Path, out: Path) -> tuple[list[batch.Task], batch.Options]:
    """The tasks and options of ``apply INPUTS -k sobel --out-dir OUT``, for ``batch.run``."""
    pipeline = Pipeline.from_dict({"stages": [{"kernel": "sobel"}]})
    sources = batch.expand_inputs([str(inputs)])
    tasks = batch.plan(sources, pipeline, output=None, out_dir=str(out), name=None, fmt=None)
    return tasks, batch.Options(pipeline=pipeline, protected=batch.input_ids(sources))


def wait_for(condition: Callable[[], bool], what: str,
             state: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what} {state()}"
        time.sleep(0.05)


def scheduler_tasks(client: Any) -> dict[str, str]:
    """The scheduler's tasks and their states."""
    return client.run_on_scheduler(
        lambda dask_scheduler: {str(k): t.state for k, t in dask_scheduler.tasks.items()})


# --- on the workers ---------------------------------------------------------------------------

class Sabotaged(DaskExecutor):
    """A DaskExecutor whose tasks run ``wrap(job)``: a job that kills its worker on cue."""

    def __init__(self, client: Any, wrap: Callable[[Any], Any]) -> None:
        super().__init__(client)
        self.wrap = wrap

    def map_unordered(self, fn, items, lost):  # type: ignore[no-untyped-def]
        return super().map_unordered(self.wrap(fn), items, lost)


class KillWorker:
    """The job, except that the worker taking a victim dies (SIGKILL) before it writes, while it
    writes (the temporary file full) or just after; ``once``: only the first time."""

    def __init__(self, job: Any, victims: dict[str, str], marker: Path, once: bool = True):
        self.job, self.victims, self.marker, self.once = job, victims, marker, once

    def _first_time(self, name: str) -> bool:
        try:
            os.close(os.open(f"{self.marker}.{name}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def __call__(self, task: batch.Task) -> batch.Result:
        name = Path(task.source.path).name
        when = self.victims.get(name)
        if when is None or not (self._first_time(name) or not self.once):
            return self.job(task)
        if when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        if when == "while":
            from imgconv.batch import job

            write_atomic = job.write_atomic

            def dying(path: Path, write: Any, *, overwrite: bool) -> None:
                def fill(stream: Any) -> None:
                    write(stream)
                    stream.flush()
                    os.kill(os.getpid(), signal.SIGKILL)

                write_atomic(path, fill, overwrite=overwrite)

            job.write_atomic = dying  # this worker dies in it
        result = self.job(task)
        os.kill(os.getpid(), signal.SIGKILL)  # "after": the output is whole, the result lost
        return result


def gate_workers(gate: str, first: str) -> None:
    """On each worker: every input but ``first`` waits (up to DEADLINE) for the file ``gate``."""
    original = getattr(workers.process, "original", workers.process)

    def gated(task: batch.Task, *args: Any) -> batch.Result:
        if Path(task.source.path).name != first:
            deadline = time.monotonic() + DEADLINE
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.02)
        return original(task, *args)

    gated.original = original  # type: ignore[attr-defined]
    workers.process = gated


def ungate_workers() -> None:
    workers.process = getattr(workers.process, "original", workers.process)


# --- services ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A LocalCluster: two worker processes of one thread, dask giving up on a task after its
    second worker dies, one task at a time on each (so a death charges only its own task)."""
    config = {"distributed.scheduler.allowed-failures": 1,
              "distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(config), distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, env={"IMGCONV_THREADS": "1"},
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as local, distributed.Client(local, timeout=DEADLINE) as client:
        yield client


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as stream:
        return subprocess.Popen([str(BIN / "dask"), *args], stdout=stream,
                                stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def scheduler_file(tmp_path: Path) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """``dask scheduler --host 127.0.0.1`` and two ``dask worker``: the scheduler file, and the
    processes (the scheduler first)."""
    path = tmp_path / "scheduler.json"
    scheduler = _start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", str(path)], tmp_path / "scheduler.log")
    procs = [scheduler]
    try:
        wait_for(lambda: path.exists() and path.stat().st_size > 0, "the scheduler file")
        procs += [_start(["worker", "--scheduler-file", str(path), "--nthreads", "1",
                          "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"],
                         tmp_path / f"worker{i}.log") for i in range(2)]
        with distributed.Client(scheduler_file=str(path), timeout=DEADLINE) as client:
            client.wait_for_workers(2, timeout=DEADLINE)
        yield path, procs
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=DEADLINE)


def read_until(proc: subprocess.Popen[bytes], text: bytes) -> bytes:
    """What ``proc`` writes to stderr until a line holds ``text``."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + DEADLINE
    while text not in seen:
        assert time.monotonic() < deadline, f"no {text!r} in {seen!r}"
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, f"ended without {text!r}: {seen!r}"
            seen += chunk
    return seen


# --- what users get ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("local", ("", batch.available_cpus())), ("local:3", ("", 3)),
    (" tcp://10.0.0.5:8786 ", ("tcp://10.0.0.5:8786", None)),
])
def test_parse_scheduler(text, expected):
    assert parse_scheduler(text) == expected


@pytest.mark.parametrize("text", ["local:0", "local:x", "local:", ""])
def test_parse_scheduler_refuses(text):
    with pytest.raises(UsageError, match="scheduler"):
        parse_scheduler(text)


def test_local_cluster_writes_what_jobs_2_writes(tmp_path):
    inputs = tmp_path / "in"
    make_inputs(inputs)
    manifest = tmp_path / "run.json"
    result = invoke("apply", inputs, "-k", "sobel", "--out-dir", tmp_path / "out",
                    "--scheduler", "local:2", "--manifest", manifest)
    assert result.exit_code == 0, result.stderr
    assert "note: on the Dask scheduler tcp://127.0.0.1:" in result.stderr
    assert "written 20, skipped 0, failed 0" in result.stderr
    assert files(tmp_path / "out") == reference(tmp_path, inputs)
    entries = json.loads(manifest.read_text())["inputs"]
    assert sorted(e["input"] for e in entries) == sorted(str(p) for p in inputs.iterdir())
    assert {e["status"] for e in entries} == {"written"}
    assert all(e["worker"].startswith("tcp://127.0.0.1:") for e in entries)


def test_scheduler_file_cluster(tmp_path, scheduler_file, monkeypatch):
    path, _ = scheduler_file
    inputs = tmp_path / "in"
    make_inputs(inputs, 8)
    result = invoke("apply", inputs, "-k", "sobel", "--out-dir", tmp_path / "out",
                    "--scheduler-file", path, "--dry-run")
    assert result.exit_code == 0, result.stderr
    address = json.loads(path.read_text())["address"]
    assert f"scheduler {address}: 2 worker(s)" in result.stdout
    assert "(w0): 1 thread(s)" in result.stdout and "(w1): 1 thread(s)" in result.stdout
    assert not (tmp_path / "out").exists()

    manifest = tmp_path / "run.json"
    result = invoke("apply", inputs, "-k", "sobel", "--out-dir", tmp_path / "out",
                    "--scheduler-file", path, "--manifest", manifest)
    assert result.exit_code == 0, result.stderr
    assert files(tmp_path / "out") == reference(tmp_path, inputs)
    entries = json.loads(manifest.read_text())["inputs"]
    assert len(entries) == 8 and {e["worker"] for e in entries} <= {"w0", "w1"}

    # IMGCONV_SCHEDULER names it too; --skip-existing resumes (here: nothing left to do)
    monkeypatch.setenv("IMGCONV_SCHEDULER", address)
    result = invoke("apply", inputs, "-k", "sobel", "--out-dir", tmp_path / "out",
                    "--skip-existing")
    assert result.exit_code == 0, result.stderr
    assert f"note: on the Dask scheduler {address}" in result.stderr
    assert "written 0, skipped 8, failed 0" in result.stderr


def test_a_worker_that_cannot_write_the_outputs_stops_the_run(tmp_path, cluster):
    inputs = tmp_path / "in"
    make_inputs(inputs, 3)
    blocked = tmp_path / "file-in-the-way"
    blocked.write_text("")
    before = scheduler_tasks(cluster)
    result = invoke("apply", inputs, "-k", "sobel", "--out-dir", blocked / "out",
                    "--scheduler", cluster.scheduler.address, "-q")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: worker tcp://127.0.0.1:")
    assert result.stderr.endswith(f"cannot write to the output folder {blocked / 'out'} (Not a "
                                  "directory): inputs and outputs must be paths every worker "
                                  "sees (a shared file system)\n")
    assert scheduler_tasks(cluster) == before  # no task was sent


# --- faults -----------------------------------------------------------------------------------

def test_workers_killed_mid_batch(tmp_path, cluster):
    inputs = tmp_path / "in"
    make_inputs(inputs)
    out = tmp_path / "out"
    tasks, options = plan(inputs, out)
    victims = {"03.png": "before", "07.jpg": "while", "11.png": "after"}
    executor = Sabotaged(cluster, lambda job: KillWorker(job, victims, tmp_path / "killed"))
    results = batch.run(tasks, options, executor=executor)
    assert sorted(r.input for r in results) == sorted(t.source.path for t in tasks)  # once each
    bad = [(r.input, r.reason) for r in results if r.status != batch.Status.WRITTEN]
    # 11.png's first attempt wrote it, then died: the second finds it whole, and says written
    assert bad == []
    assert executor.worker_died
    assert parts(out) == []  # 07.jpg's worker died with its temporary file full
    assert files(out) == reference(tmp_path, inputs)
    assert sorted(p.name for p in tmp_path.glob("killed.*")) == [f"killed.{n}" for n in victims]


def test_a_file_that_kills_every_worker_fails_alone(tmp_path, cluster):
    inputs = tmp_path / "in"
    make_inputs(inputs, 6)
    out = tmp_path / "out"
    tasks, options = plan(inputs, out)
    victims = {"04.jpg": "while"}
    executor = Sabotaged(cluster, lambda job: KillWorker(job, victims, tmp_path / "k", once=False))
    results = batch.run(tasks, options, executor=executor)
    assert len(results) == 6
    failed = [r for r in results if r.status == batch.Status.FAILED]
    assert [r.input for r in failed] == [str(inputs / "04.jpg")]
    assert "the workers that took it died, 2 times" in failed[0].reason
    assert parts(out) == []
    expected = reference(tmp_path, inputs)
    del expected["04.jpg"]
    assert files(out) == expected


def test_an_unreachable_scheduler_is_a_usage_error(tmp_path):
    inputs = tmp_path / "in"
    make_inputs(inputs, 2)
    start = time.monotonic()
    result = invoke("apply", inputs, "-k", "sobel", "--out-dir", tmp_path / "out",
                    "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "1")
    assert result.exit_code == 2
    assert result.stderr == ("error: cannot reach the scheduler at tcp://127.0.0.1:9 within 1 s "
                             "(--scheduler-timeout): is it running, and is the address right?\n")
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--scheduler", "local:0"], "--scheduler local:0: a local cluster needs >= 1 worker"),
    (["--scheduler-file", "missing.json"], "--scheduler-file missing.json: cannot read it"),
    (["--scheduler", "local", "--jobs", "2"], "--jobs is for this machine's processes"),
    (["--scheduler", "local", "--scheduler-file", "x.json"], "give one of --scheduler and "
     "--scheduler-file"),
    (["--scheduler", "local", "--scheduler-timeout", "0"], "--scheduler-timeout must be > 0"),
])
def test_cluster_options_are_checked_first(tmp_path, args, message):
    inputs = tmp_path / "in"
    make_inputs(inputs, 1)
    result = invoke("apply", inputs, "-k", "sobel", "--out-dir", tmp_path / "out", *args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_scheduler_lost_mid_run(tmp_path, scheduler_file):
    path, (scheduler, *dask_workers) = scheduler_file
    inputs = tmp_path / "in"
    make_inputs(inputs, 10)
    out, manifest, gate = tmp_path / "out", tmp_path / "run.json", tmp_path / "gate"
    with distributed.Client(scheduler_file=str(path), timeout=DEADLINE) as client:
        client.run(gate_workers, str(gate), "00.png")
    proc = subprocess.Popen(
        [str(BIN / "imgconv"), "apply", str(inputs), "-k", "sobel", "--out-dir", str(out),
         "--scheduler-file", str(path), "--manifest", str(manifest)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        seen = read_until(proc, b"00.png (")  # the first input is written; the rest wait
        os.killpg(scheduler.pid, signal.SIGKILL)
        _, rest = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = (seen + rest).decode()
    assert proc.returncode == 1, stderr
    lost = [line for line in stderr.splitlines() if "not done: the connection to the scheduler "
            "was lost (rerun with --skip-existing to finish the batch)" in line]
    assert len(lost) == 9
    assert "written 1, skipped 0, failed 9" in stderr
    entries = json.loads(manifest.read_text())["inputs"]
    assert sorted(e["input"] for e in entries) == sorted(str(p) for p in inputs.iterdir())
    assert [e["input"] for e in entries if e["status"] == "written"] == [str(inputs / "00.png")]

    # the workers' waiting tasks die with them: a rerun completes the batch
    for proc in dask_workers:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
    result = invoke("apply", inputs, "-k", "sobel", "--out-dir", out, "--skip-existing",
                    "--jobs", "2")
    assert result.exit_code == 0, result.stderr
    assert files(out) == reference(tmp_path, inputs) and parts(out) == []


def test_ctrl_c_cancels_the_tasks(tmp_path, cluster):
    inputs = tmp_path / "in"
    make_inputs(inputs, 10)
    out, gate = tmp_path / "out", tmp_path / "gate"
    cluster.run(gate_workers, str(gate), "00.png")
    address = cluster.scheduler.address
    before = scheduler_tasks(cluster)
    proc = subprocess.Popen(
        [str(BIN / "imgconv"), "apply", str(inputs), "-k", "sobel", "--out-dir", str(out),
         "--scheduler", address], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        seen = read_until(proc, b"00.png (")
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=DEADLINE)
        # the two tasks that were running go on (a thread cannot be stopped); nothing else runs
        wait_for(lambda: scheduler_tasks(cluster) == before, "the tasks' cancellation",
                 lambda: scheduler_tasks(cluster))
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
        cluster.run(ungate_workers)
    stderr = (seen + rest).decode()
    assert proc.returncode == 130, stderr
    assert "interrupted: finished outputs are complete; none is partial" in stderr
    wait_for(lambda: not any(cluster.run(lambda dask_worker: dask_worker.state.executing_count)
                             .values()), "the running tasks")
    expected = reference(tmp_path, inputs)
    written = files(out)
    assert 1 <= len(written) <= 3  # the first, and those that were running
    assert all(written[name] == expected[name] for name in written)
    assert parts(out) == []


def test_a_tiled_image_runs_on_the_active_client(cluster, tmp_path):
    """imgconv.tiled on a Client's cluster: workers open the file by path, compute the chunks
    with imgconv's core, and the saved result equals the in-memory one (issue 16)."""
    import tifffile

    import imgconv
    import imgconv.tiled

    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", image, tile=(16, 16), photometric="rgb",
                     compression="zlib")
    kernel = np.arange(1.0, 10.0).reshape(3, 3)
    lazy = imgconv.tiled.correlate(imgconv.tiled.open(tmp_path / "in.tif", chunk=32), kernel,
                                   pad_mode="wrap")
    with distributed.get_task_stream(cluster) as stream:
        imgconv.tiled.save(lazy.astype(np.float32), tmp_path / "out.npy")
    workers = {task["worker"] for task in stream.data if "imgconv-conv" in str(task["key"])}
    assert workers, "no chunk ran on the cluster"
    expected = imgconv.correlate(image, kernel, pad_mode="wrap")
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-6)
