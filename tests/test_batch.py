"""imgconv.batch hardening: other paths to one file, symlink loops, locked folders, signals,
closed pipes, concurrent runs and names (issue 14)."""

from __future__ import annotations

import builtins
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgconv import batch
from imgconv.cli import app
from imgconv.errors import UsageError

runner = CliRunner()
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def invoke(*args: object, input: bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def small_png(path: Path, size: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


def parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.part"))


# --- other paths to the same file -----------------------------------------------------------

def test_a_hard_link_to_an_input_is_the_input(tmp_path):
    x = small_png(tmp_path / "a" / "x.png")
    before = x.read_bytes()
    (tmp_path / "b").mkdir()
    os.link(x, tmp_path / "b" / "x.png")
    result = invoke("apply", x, "-k", "box-blur", "-o", tmp_path / "b" / "x.png", "--overwrite")
    assert result.exit_code == 1
    assert "is an input; refusing to write it" in result.stderr
    result = invoke("apply", x, "-k", "box-blur", "--out-dir", tmp_path / "b", "--overwrite")
    assert result.exit_code == 1
    assert "is an input; refusing to write it" in result.stderr
    assert os.path.samefile(x, tmp_path / "b" / "x.png") and x.read_bytes() == before
    # a manifest onto a hard link of an input is refused before anything runs
    result = invoke("apply", x, "-k", "box-blur", "--out-dir", tmp_path / "o",
                    "--manifest", tmp_path / "b" / "x.png", "--overwrite")
    assert result.exit_code == 2
    assert "is an input image" in result.stderr


def test_other_names_of_one_input_are_filtered_once(tmp_path, monkeypatch):
    x = small_png(tmp_path / "x.png")
    os.link(x, tmp_path / "hard.png")
    os.symlink(x, tmp_path / "soft.png")
    monkeypatch.chdir(tmp_path)
    sources = batch.expand_inputs(["x.png", "./x.png", "hard.png", "soft.png", str(x)])
    assert [s.path for s in sources] == ["x.png"]


@pytest.fixture
def bind_mount(tmp_path):
    """``b`` mounted over ``a`` (root on Linux only): one folder under two paths."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    try:
        done = subprocess.run(["mount", "--bind", str(a), str(b)], capture_output=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("mount is not available")
    if done.returncode != 0:
        pytest.skip(f"mount --bind is not allowed here: {done.stderr.decode().strip()}")
    yield a, b
    subprocess.run(["umount", str(b)], capture_output=True, timeout=30, check=False)


def test_an_output_through_a_bind_mount_is_the_input(bind_mount):
    a, b = bind_mount
    x = small_png(a / "x.png")
    before = x.read_bytes()
    result = invoke("apply", x, "-k", "box-blur", "-o", b / "x.png", "--overwrite")
    assert result.exit_code == 1
    assert "is an input; refusing to write it" in result.stderr
    result = invoke("apply", x, "-k", "box-blur", "--out-dir", b, "--overwrite")
    assert result.exit_code == 1
    assert x.read_bytes() == before
    # two outputs that are one file under two names: the second fails
    tasks = [batch.Task(batch.Source(str(x)), str(a / "o" / "y.png"), "png"),
             batch.Task(batch.Source(str(x)), str(b / "o" / "y.png"), "png")]
    options = batch.Options(pipeline=_pipeline())
    results = batch.run(tasks, options)
    assert sorted(r.status for r in results) == ["failed", "written"]
    assert any("same output" in r.reason for r in results)
    with pytest.raises(UsageError, match="is also the output"):
        batch.check_manifest_path(str(b / "o" / "y.png"), tasks[:1], overwrite=True)


def _pipeline():
    from imgconv.pipeline import Pipeline

    return Pipeline.from_options(["box-blur"])


# --- globs and folders ----------------------------------------------------------------------

def test_a_recursive_glob_does_not_follow_a_symlink_loop(tmp_path, imgconv_script):
    small_png(tmp_path / "loop" / "x.png")
    small_png(tmp_path / "loop" / "sub" / "y.png")
    os.symlink("..", tmp_path / "loop" / "sub" / "up")
    done = subprocess.run([imgconv_script, "apply", "loop/**/*.png", "-k", "box-blur",
                           "--out-dir", "out", "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    files = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  loop")]
    assert files == ["loop/sub/y.png", "loop/x.png"]


def test_recursive_glob_matches_as_glob_does(tmp_path, monkeypatch):
    for name in ("a/x.png", "a/b/y.png", "a/b/c/z.png", "a/.hidden/h.png", "a/b/n.jpg"):
        small_png(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    for pattern in ("a/**/*.png", "**/*.png", "a/**/b/*.png", "a/*/**/*.png", "a/**/*"):
        import glob

        want = sorted(p for p in glob.glob(pattern, recursive=True) if not p.endswith("/"))
        want = [p for p in want if batch.tasks._is_image_file(Path(p))]
        got = [s.path for s in batch.expand_inputs([pattern])]
        assert got == want, pattern


@pytest.fixture
def deny(monkeypatch):
    """``deny(folder)``: reading ``folder``, or anything beneath it, raises PermissionError,
    as for a folder without read and execute permission (chmod does not deny root)."""
    denied: list[str] = []

    def blocked(path, inside_only=False) -> bool:
        try:
            text = os.path.abspath(os.fsdecode(path))
        except TypeError:
            return False  # a file descriptor
        return any(text.startswith(d + os.sep) or (not inside_only and text == d)
                   for d in denied)

    def wrap(fn, inside_only=False):
        def guarded(path=".", *args, **kwargs):
            if blocked(path, inside_only):
                raise PermissionError(13, "Permission denied", os.fsdecode(path))
            return fn(path, *args, **kwargs)
        return guarded

    monkeypatch.setattr(os, "scandir", wrap(os.scandir))
    monkeypatch.setattr(os, "listdir", wrap(os.listdir))
    monkeypatch.setattr(os, "stat", wrap(os.stat, inside_only=True))
    monkeypatch.setattr(os, "lstat", wrap(os.lstat, inside_only=True))
    monkeypatch.setattr(os, "mkdir", wrap(os.mkdir, inside_only=True))
    monkeypatch.setattr(builtins, "open", wrap(builtins.open, inside_only=True))
    return lambda folder: denied.append(os.path.abspath(folder))


def test_an_input_in_a_folder_that_cannot_be_entered_fails_alone(tmp_path, deny):
    good = small_png(tmp_path / "good.png")
    locked = small_png(tmp_path / "locked" / "x.png")
    deny(tmp_path / "locked")
    result = invoke("apply", locked, good, "-k", "box-blur", "--out-dir", tmp_path / "out")
    assert result.exit_code == 1
    assert "internal error" not in result.stderr
    assert "Permission denied" in result.stderr
    assert "written 1, skipped 0, failed 1" in result.stderr
    assert (tmp_path / "out" / "good.png").exists()


def test_an_unreadable_input_folder_fails_alone(tmp_path, deny):
    good = small_png(tmp_path / "good.png")
    small_png(tmp_path / "locked" / "x.png")
    deny(tmp_path / "locked")
    result = invoke("apply", tmp_path / "locked", good, "-k", "box-blur",
                    "--out-dir", tmp_path / "out")
    assert result.exit_code == 1
    assert "internal error" not in result.stderr
    assert f"{tmp_path / 'locked'}: cannot read the folder (Permission denied)" in result.stderr
    assert "written 1, skipped 0, failed 1" in result.stderr


def test_an_out_dir_beneath_a_locked_folder_fails_per_input(tmp_path, deny):
    good = small_png(tmp_path / "good.png")
    (tmp_path / "locked").mkdir()
    deny(tmp_path / "locked")
    result = invoke("apply", good, "-k", "box-blur", "--out-dir", tmp_path / "locked" / "out")
    assert result.exit_code == 1
    assert "internal error" not in result.stderr
    assert "Permission denied" in result.stderr
    assert "written 0, skipped 0, failed 1" in result.stderr


def test_a_locked_subfolder_under_recursive_is_reported(tmp_path, deny):
    small_png(tmp_path / "in" / "a.png")
    small_png(tmp_path / "in" / "locked" / "b.png")
    deny(tmp_path / "in" / "locked")
    result = invoke("apply", tmp_path / "in", "-r", "-k", "box-blur", "--out-dir",
                    tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (f"warning: {tmp_path / 'in' / 'locked'}: cannot read the folder "
            "(Permission denied)") in result.stderr
    assert "written 1, skipped 0, failed 0" in result.stderr


def test_check_reports_locked_folders_as_apply_does(tmp_path, deny):
    small_png(tmp_path / "in" / "a.png")
    small_png(tmp_path / "in" / "locked" / "b.png")
    small_png(tmp_path / "shut" / "c.png")
    deny(tmp_path / "in" / "locked")
    deny(tmp_path / "shut")
    result = invoke("check", tmp_path / "in", tmp_path / "shut", "-r", "-k", "box-blur")
    assert result.exit_code == 1
    assert (f"warning: {tmp_path / 'in' / 'locked'}: cannot read the folder "
            "(Permission denied)") in result.stderr
    assert f"error: {tmp_path / 'shut'}: cannot read the folder (Permission denied)" \
        in result.stderr.splitlines()


@pytest.mark.skipif(ROOT or os.name != "posix", reason="chmod does not deny root")
def test_real_locked_folders(tmp_path):
    good = small_png(tmp_path / "good.png")
    small_png(tmp_path / "in" / "locked" / "b.png")
    small_png(tmp_path / "in" / "a.png")
    locked = tmp_path / "in" / "locked"
    locked.chmod(0)
    try:
        result = invoke("apply", locked / "b.png", locked, good, "-k", "box-blur",
                        "--out-dir", tmp_path / "out")
        assert result.exit_code == 1
        assert "internal error" not in result.stderr
        assert "written 1, skipped 0, failed 2" in result.stderr
        result = invoke("apply", tmp_path / "in", "-r", "-k", "box-blur",
                        "--out-dir", tmp_path / "out2")
        assert "cannot read the folder" in result.stderr
        result = invoke("apply", good, "-k", "box-blur", "--out-dir", locked / "out")
        assert result.exit_code == 1 and "internal error" not in result.stderr
    finally:
        locked.chmod(0o755)


# --- jobs and workers -----------------------------------------------------------------------

def test_jobs_are_capped_at_the_cpu_count(tmp_path, monkeypatch):
    monkeypatch.setattr(batch.workers, "available_cpus", lambda: 2)
    executor = batch.make_executor(1000, 50)
    assert isinstance(executor, batch.ProcessExecutor) and executor.jobs == 2
    inputs = [small_png(tmp_path / f"{n}.png", seed=n) for n in range(3)]
    result = invoke("apply", *inputs, "-k", "box-blur", "--out-dir", tmp_path / "out",
                    "--jobs", "1000", "--dry-run")
    assert "note: --jobs 1000 capped at 2 (the number of CPUs)" in result.stderr
    result = invoke("apply", *inputs, "-k", "box-blur", "--out-dir", tmp_path / "out",
                    "--jobs", "2", "--dry-run")
    assert "capped" not in result.stderr


#: Runs imgconv with an encoder that writes half an image, says so, then never finishes.
STUCK = """
import os, sys, time
import imgconv.batch.job as b
def stuck(array, fmt, stream, **kwargs):
    stream.write(b"half")
    stream.flush()
    while True:
        time.sleep(0.05)
b.encode = stuck
from imgconv.__main__ import script
sys.argv[0] = "imgconv"
script()
"""


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


def _wait_for(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _stuck_run(tmp_path: Path, n: int, *options: str) -> tuple[subprocess.Popen[bytes], Path]:
    inputs = [str(small_png(tmp_path / "in" / f"{k}.png", seed=k)) for k in range(n)]
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK, "apply", *inputs, "-k", "box-blur", "--out-dir", str(out),
         *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    return process, out


def _kill(process: subprocess.Popen[bytes], workers: set[int]) -> None:
    """End what a failed test left running: the run and the workers it had."""
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)
    for pid in workers:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@needs_proc
def test_workers_exit_when_the_main_process_is_killed(tmp_path):
    process, out = _stuck_run(tmp_path, 6, "--jobs", "2")
    workers: set[int] = set()
    try:
        assert _wait_for(lambda: len(parts(out)) == 2 if out.exists() else False)
        workers |= _children(process.pid)
        assert len(workers) >= 2
        process.kill()
        process.wait(timeout=30)
        assert _wait_for(lambda: not any(_alive(w) for w in workers), timeout=60)
        assert parts(out) == []  # each worker removed its temporary file
    finally:
        _kill(process, workers)


@needs_proc
@pytest.mark.parametrize(("signum", "group", "options"), [
    (signal.SIGTERM, False, ("--jobs", "1")),
    (signal.SIGHUP, False, ("--jobs", "1")),
    (signal.SIGTERM, False, ("--jobs", "2")),
    (signal.SIGHUP, True, ("--jobs", "2")),
])
def test_sigterm_and_sighup_leave_no_temporary_file(tmp_path, signum, group, options):
    n = 1 if options[1] == "1" else 4
    process, out = _stuck_run(tmp_path, n, *options)
    workers: set[int] = set()
    try:
        want = 1 if n == 1 else 2
        assert _wait_for(lambda: len(parts(out)) == want if out.exists() else False)
        workers |= _children(process.pid)
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 128 + signum, err
        assert b"Traceback" not in err
        assert _wait_for(lambda: parts(out) == [], timeout=60)
    finally:
        _kill(process, workers)


def test_a_run_removes_stale_temporary_files(tmp_path):
    x = small_png(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    dead = 2**22 + 1  # above Linux's largest pid: no such process
    stale = out / f".x.png.{dead}.k3j_x9q2.part"
    fresh = out / f".y.png.{dead}.k3j_x9q3.part"  # written a moment ago: maybe another host
    live = out / f".z.png.{os.getpid()}.k3j_x9q4.part"
    other = out / ".notes.txt.part"
    for path in (stale, fresh, live, other):
        path.write_bytes(b"half")
    old = time.time() - 3600
    for path in (stale, live, other):
        os.utime(path, (old, old))
    result = invoke("apply", x, "-k", "box-blur", "--out-dir", out)
    assert result.exit_code == 0, result.output
    assert parts(out) == sorted(p.name for p in (fresh, live, other))


def test_a_run_removes_a_stale_zarr_store_being_written(tmp_path):
    pytest.importorskip("zarr", reason="needs the scale extra")
    x = small_png(tmp_path / "x.png")
    out = tmp_path / "out"
    stale = out / f".x.zarr.{2**22 + 1}.k3j_x9q2.part"  # a folder a killed run left
    (stale / "c").mkdir(parents=True)
    (stale / "zarr.json").write_text("{}")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    result = invoke("apply", x, "-k", "box-blur", "--out-dir", out, "--format", "zarr")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["x.zarr"]


def test_temporary_names_carry_the_pid(tmp_path, monkeypatch):
    seen = []

    def spy(array, fmt, stream, **kwargs):
        seen.extend(p.name for p in tmp_path.iterdir() if p.name.endswith(".part"))
        stream.write(b"x")

    monkeypatch.setattr(batch.job, "encode", spy)
    x = small_png(tmp_path / "x.png")
    assert invoke("apply", x, "-k", "box-blur", "-o", tmp_path / "o.png").exit_code == 0
    assert seen[0].startswith(f".o.png.{os.getpid()}.") and seen[0].endswith(".part")


# --- standard output ------------------------------------------------------------------------

def test_a_closed_pipe_is_not_success(tmp_path, imgconv_script):
    x = tmp_path / "big.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(x)
    process = subprocess.Popen([imgconv_script, "apply", str(x), "-k", "identity", "-o", "-",
                                "--format", "png"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert len(process.stdout.read(10)) == 10
    process.stdout.close()  # as `| head -c 10` does
    err = process.stderr.read().decode()
    process.wait(timeout=60)
    assert process.returncode == 141, err
    assert "written 1" not in err
    assert "Traceback" not in err and "Exception ignored" not in err


class _Trickle(io.RawIOBase):
    """A stream that takes at most 1000 bytes a call, as a pipe or a slow device may."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        taken = bytes(b[:1000])
        self.data += taken
        return len(taken)


def test_short_writes_to_standard_output_are_completed(tmp_path, monkeypatch):
    x = small_png(tmp_path / "x.png", size=64)
    raw = _Trickle()

    class Out:
        buffer = raw

    monkeypatch.setattr(sys, "stdout", Out())
    task = batch.Task(batch.Source(str(x)), "-", "png")
    result = batch.process(task, batch.Options(pipeline=_pipeline()))
    assert result.status == "written", result.reason
    assert len(raw.data) > 1000
    assert Image.open(io.BytesIO(bytes(raw.data))).size == (64, 64)


# --- manifest, concurrent runs, names, empty paths ------------------------------------------

def test_a_manifest_failure_comes_after_the_files_and_summary(tmp_path):
    good = small_png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    (tmp_path / "file").write_text("in the way")
    result = invoke("apply", good, bad, "-k", "box-blur", "--out-dir", tmp_path / "out",
                    "--manifest", tmp_path / "file" / "run.json")
    assert result.exit_code == 1
    err = result.stderr
    assert "bad.png" in err and "written 1, skipped 0, failed 1" in err
    assert "a file is in the way" in err and "File exists" not in err
    assert err.index("written 1") < err.index("--manifest")


def test_a_manifest_that_became_a_folder_says_so(tmp_path):
    small_png(tmp_path / "in" / "sub" / "x.png")
    out = tmp_path / "out"
    result = invoke("apply", tmp_path / "in", "-r", "-k", "box-blur", "--out-dir", out,
                    "--manifest", out / "sub")
    assert result.exit_code == 1
    assert f"--manifest {out / 'sub'}: is a folder" in result.stderr
    assert "written 1, skipped 0, failed 0" in result.stderr


def test_an_output_that_appears_during_the_run_is_skipped(tmp_path, monkeypatch):
    real = batch.job.encode
    x = small_png(tmp_path / "x.png")
    out = tmp_path / "out"

    def racing(array, fmt, stream, **kwargs):
        (out / "x.png").write_bytes(b"the other run's")  # another run got there first
        real(array, fmt, stream, **kwargs)

    monkeypatch.setattr(batch.job, "encode", racing)
    result = invoke("apply", x, "-k", "box-blur", "--out-dir", out, "--skip-existing")
    assert result.exit_code == 0, result.output
    assert "written 0, skipped 1, failed 0" in result.stderr
    assert (out / "x.png").read_bytes() == b"the other run's"
    assert parts(out) == []
    (out / "x.png").unlink()
    result = invoke("apply", x, "-k", "box-blur", "--out-dir", out)
    assert result.exit_code == 1
    assert "already exists" in result.stderr


@pytest.mark.parametrize(("a", "b"), [
    ("gaussian:sigma=1/3", "gaussian:sigma=2/3"),
    ("1/9 1/9 1/9", "2/9 2/9 2/9"),
    ("0 1 0; 1 -4 1; 0 1 0", "0 1 0;1 -4 1;0 1 0"),
])
def test_kernel_names_in_file_names_never_collide(tmp_path, a, b):
    x = small_png(tmp_path / "x.png")
    out = tmp_path / "out"
    for spec in (a, b):
        result = invoke("apply", x, "-k", spec, "--out-dir", out,
                        "--name", "{stem}-{kernel}{ext}")
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2, names
    assert all("/" not in n and " " not in n for n in names)


def test_file_safe_kernel_names():
    assert batch.tasks._file_safe("sobel-x") == "sobel-x"
    assert batch.tasks._file_safe("gaussian:sigma=2") == "gaussian_sigma=2"
    assert batch.tasks._file_safe("sobel+gaussian:sigma=2") == "sobel+gaussian_sigma=2"
    long_a, long_b = "box:size=3+" * 10 + "a", "box:size=3+" * 10 + "b"
    assert batch.tasks._file_safe(long_a) != batch.tasks._file_safe(long_b)
    assert len(batch.tasks._file_safe(long_a)) <= 60
    assert batch.tasks._file_safe("x_y") != batch.tasks._file_safe("x:y")
    assert batch.tasks._file_safe("1/3").startswith("1_3-")


@pytest.mark.parametrize(("args", "message"), [
    (["", "-k", "box-blur", "-o", "o.png"], "an input path is empty"),
    (["x.png", "-k", "box-blur", "--out-dir", ""], "--out-dir: the path is empty"),
    (["x.png", "-k", "box-blur", "-o", ""], "-o: the path is empty"),
    (["x.png", "-k", "box-blur", "-o", "o.png", "--manifest", ""], "--manifest: the path is"),
    (["x.png", "-k", "box-blur", "-o", "-", "--format", "png", "--manifest", "-"],
     "--manifest -: standard output already carries the image"),
])
def test_empty_paths_are_refused(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    small_png(tmp_path / "x.png")
    result = invoke("apply", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_manifest_dash_goes_to_standard_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = small_png(tmp_path / "x.png")
    result = invoke("apply", x, "-k", "box-blur", "-o", tmp_path / "o.png", "--manifest", "-")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["inputs"][0]["status"] == "written"
    assert not Path("-").exists()
