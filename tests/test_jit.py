"""The compiled path (imgconv.core.jit): the numpy executor's bits, its settings, its absence.

test_conv.py and test_strategies.py run every strategy against scipy and the
loop reference on both executors (conftest.executor); here the compiled one is
compared with the numpy one bit for bit, and its switches are checked.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_conv import make_image
from test_strategies import geometries, worker
from typer.testing import CliRunner

from imgconv.cli import app
from imgconv.core import jit, strategies, tiles
from imgconv.core.geometry import Geometry
from imgconv.core.padding import PAD_MODES
from imgconv.core.taps import build_program, direct_program, program_2d

needs_numba = pytest.mark.skipif(not jit.installed(), reason="numba is not installed")


@pytest.fixture
def restore_jit():
    yield
    jit.set_jit(None)


def both_paths(func, monkeypatch=None):
    """``func()`` with the numpy executor, then with the compiled one.

    With ``monkeypatch``, also checks that the compiled one did run a kernel.
    """
    runs = []
    if monkeypatch is not None:
        run = jit.run
        monkeypatch.setattr(jit, "run", lambda *a: run(*a) and not runs.append(1))
    try:
        jit.set_jit(False)
        plain = func()
        assert not runs
        jit.set_jit(True)
        compiled = func()
    finally:
        jit.set_jit(None)
    assert monkeypatch is None or runs, "the compiled path ran no kernel"
    return plain, compiled


def assert_same_bits(actual, expected):
    """Equal bit for bit, signed zeros included; NaNs only need to be NaN in both.

    (When two NaNs of opposite sign meet in an addition, which one survives
    depends on the operand order the hardware uses, and LLVM's vectorized
    loop and its scalar tail differ from numpy's loops there.)
    """
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if actual.dtype.kind == "f":
        nan = np.isnan(expected)
        np.testing.assert_array_equal(np.isnan(actual), nan)
        actual, expected = actual[~nan], expected[~nan]
    np.testing.assert_array_equal(actual.view(f"u{actual.itemsize}"),
                                  expected.view(f"u{expected.itemsize}"))


@needs_numba
# (the kernels of test_strategies.COMPILED_KERNELS: each program shape compiles once)
@given(case=geometries(compiled=True),
       dtype=st.sampled_from([np.float32, np.float64, np.uint8, np.int8]),
       strategy=st.sampled_from(["direct", "separable"]), read_only=st.booleans())
def test_compiled_path_gives_the_numpy_bits(case, dtype, strategy, read_only):
    # each path on its own tile grid (direct's are larger when compiled)
    # (uint8 and int8 take the int16 sums where they are exact)
    image = make_image(case["shape"], dtype, seed=case["seed"])
    if dtype == np.int8:
        image = (image.astype(np.int16) - 100).clip(-128, 127).astype(np.int8)
    image.flags.writeable = not read_only
    with pytest.MonkeyPatch.context() as mp:
        if case["small"]:
            mp.setattr(strategies, "TILE_BYTES", 64)
        plain, compiled = both_paths(lambda: worker(
            image, case["kernel"], strategy, padding=case["padding"], stride=case["stride"],
            dilation=case["dilation"], pad_mode=case["mode"], cval=3.0),
            # (a zero kernel's program reads nothing; separable's matrix
            # products may take both passes)
            mp if strategy == "direct" and case["kernel"].any() else None)
    assert_same_bits(compiled, plain)


KERNELS = {
    "box": np.ones((3, 3)) / 9,
    "sobel": np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]),
    "diagonal": np.array([[-1.0, -1, 2], [-1, 2, -1], [2, -1, -1]]),
    "gaussian5": np.outer([1.0, 4, 6, 4, 1], [1.0, 4, 6, 4, 1]) / 256,
    "rank2": np.array([[1.0, 2, 1], [0, 0, 0], [-1, 3, -1]]),
}


@needs_numba
@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("strategy", ["direct", "separable"])
@pytest.mark.parametrize("layout", ["plane", "channels", "nan"])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf - inf, in the pool
def test_each_strategy_gives_the_same_bits_on_both_paths(name, strategy, layout, monkeypatch):
    # each path's own tiles, over an image large enough for the thread pool
    # (gaussian5 takes separable's matrix products; "nan": its tiles that are
    # not finite are recomputed pass by pass)
    shape = (600, 301, 3) if layout == "channels" else (1500, 701)
    image = make_image(shape, np.float32)
    if layout == "nan":
        image[700, 350] = np.nan
        image[20, :40] = np.inf
    # (separable's matrix products take both of gaussian5's passes but on the NaN's tiles)
    products_only = strategy == "separable" and name == "gaussian5" and layout != "nan"
    plain, compiled = both_paths(lambda: worker(image, KERNELS[name], strategy),
                                 None if products_only else monkeypatch)
    assert_same_bits(compiled, plain)


@needs_numba
def test_run_declines_what_it_cannot_take():
    program = program_2d(np.array([[1.0, 2.0], [3.0, -4.0]]), (1, 1))
    src = np.arange(30, dtype=np.float32).reshape(5, 6)
    acc = np.empty((4, 5), np.float32)
    assert jit.run(program.steps, [src], (1, 1), acc)
    # a source in another dtype, several separate sources, an unsupported
    # dtype, a read-only accumulator
    assert not jit.run(program.steps, [src.astype(np.uint8)], (1, 1), acc)
    assert not jit.run(program.steps, [src, src], (1, 1), acc)
    assert not jit.run(program.steps, [src.astype(np.int32)], (1, 1), acc.astype(np.int32))
    frozen = np.zeros_like(acc)
    frozen.flags.writeable = False
    assert not jit.run(program.steps, [src], (1, 1), frozen)
    assert not frozen.any()
    # and a program longer than MAX_STEPS (a 9x9 of distinct weights: 161 steps)
    long = program_2d(np.random.default_rng(0).standard_normal((9, 9)), (1, 1))
    assert len(long.steps) > jit.MAX_STEPS
    assert not jit.run(long.steps, [np.zeros((12, 13), np.float32)], (1, 1),
                       np.empty((4, 5), np.float32))


@needs_numba
@pytest.mark.parametrize("stride", [(1, 1), (2, 1), (1, 2), (3, 3), (1, jit.DENSE_MAX_STRIDE),
                                    (2, jit.DENSE_MAX_STRIDE + 1)])
def test_run_agrees_with_the_numpy_executor(stride, restore_jit):
    # column strides: up to DENSE_MAX_STRIDE every column is summed, then
    # every sx-th kept; above it only the kept columns are read
    program = program_2d(np.array([[1.0, 2.0], [3.0, -4.0]]), (1, 1))
    src = make_image((11, 43), np.float32)
    rows, cols = (11 - 2) // stride[0] + 1, (43 - 2) // stride[1] + 1
    acc = np.empty((rows, cols), np.float32)
    assert jit.run(program.steps, [src], stride, acc)
    expected = np.empty_like(acc)
    jit.set_jit(False)
    program.run([src], acc.shape, stride, expected, np.empty_like(acc))
    assert_same_bits(acc, expected)
    # one row or one column more would read past the source: refused, not read
    for more in ((rows + 1, cols), (rows, cols + 1)):
        with pytest.raises(ValueError, match="reads up to index"):
            jit.run(program.steps, [src], stride, np.empty(more, np.float32))
    for bad in ((0, 1), (1, 0), (-1, 1)):
        with pytest.raises(ValueError, match="strides must be >= 1"):
            jit.run(program.steps, [src], bad, acc)


@needs_numba
@pytest.mark.parametrize("mode", PAD_MODES)
@pytest.mark.parametrize(("pads", "sy", "dilation"), [
    ((1, 1, 1, 1), 1, (1, 1)), ((2, 0, 3, 1), 2, (1, 1)), ((4, 4, 4, 4), 1, (2, 3)),
    ((0, 0, 0, 0), 1, (1, 1)), ((9, 9, 9, 9), 3, (1, 1))])
def test_run_reads_the_image_in_place_as_the_padded_tile_would(mode, pads, sy, dilation):
    # Mapped: the image and the border mode's index maps in place of a padded
    # tile, on a kernel of distinct taps (the diff, sub and scratch steps among
    # them), whole plane and tile by tile; padding wider than the image too
    kernel = np.array([[1.0, -2, 3], [0.5, 0, -4], [7, 1, 1]], np.float32)
    image = make_image((7, 5), np.float32) - 100
    geom = Geometry(image.shape, kernel.shape, pads, (sy, 1), dilation)
    oh, ow = geom.out_shape
    padder = tiles.Padder(image, geom, mode, 2.5)
    program = direct_program(kernel, dilation)
    padded = np.empty((padder.rows_total, padder.width), np.float32)
    padder.fill(padded, 0, padder.rows_total)
    expected = np.empty((oh, ow), np.float32)
    program.run([padded], (oh, ow), (sy, 1), expected, np.empty_like(expected), compiled=False)
    view = padder.mapped(ow, geom.extent[1], np.dtype(np.float32))
    for r0, r1 in [(0, oh), *tiles.tile_grid(oh, 2)]:
        acc = np.full((r1 - r0, ow), np.nan, np.float32)
        assert jit.run(program.steps, view._replace(p0=r0 * sy), (sy, 1), acc)
        assert_same_bits(acc, expected[r0:r1])
    # one row more than the row map holds, or columns past the map: refused, not read
    with pytest.raises(ValueError, match="reads up to index"):
        jit.run(program.steps, view._replace(p0=sy), (sy, 1), np.empty((oh, ow), np.float32))
    with pytest.raises(ValueError, match="reads up to index"):
        jit.run(program.steps, view, (sy, 1), np.empty((oh, ow + 1), np.float32))
    # interior columns past the output, a first row before the plane: refused,
    # also for a program that reads nothing (it still writes)
    zero = direct_program(np.zeros((3, 3), np.float32), dilation).steps
    for bad in (view._replace(interior=(0, ow + 50)), view._replace(p0=-100000)):
        for steps in (program.steps, zero):
            with pytest.raises(ValueError, match="lie outside"):
                jit.run(steps, bad, (sy, 1), np.empty((oh, ow), np.float32))
    # an interior that reaches the border columns: its taps would read past the rows
    if view.left and view.interior[1] > view.interior[0]:
        with pytest.raises(ValueError, match="reads up to index"):
            jit.run(program.steps, view._replace(interior=(0, view.interior[1])), (sy, 1),
                    np.empty((oh, ow), np.float32))
    # index maps that point outside the image or the output: refused, not read
    for bad in (view._replace(rows=view.rows + 100), view._replace(cols=view.cols - 5),
                view._replace(border=np.array([ow + 3])), view._replace(fill=view.fill[:1])):
        with pytest.raises(ValueError, match="index maps point outside"):
            jit.run(program.steps, bad, (sy, 1), np.empty((oh, ow), np.float32))
    # what it does not take: a column stride, another dtype
    assert not jit.run(program.steps, view, (sy, 2), np.empty((oh, ow), np.float32))
    assert not jit.run(program.steps, view, (sy, 1), np.empty((oh, ow), np.float64))


@needs_numba
def test_the_constant_keeps_its_sign_of_zero(restore_jit):
    # cval -0.0 and 0.0 are equal (and hash alike): a cache keyed by the value
    # would give one the other's row of the constant (regression)
    image, kernel = np.ones((4, 4), np.float32), np.ones((1, 1), np.float32)

    def corner(cval):
        return np.signbit(worker(image, kernel, "direct", padding=1, pad_mode="constant",
                                 cval=cval)[0, 0])

    for on in (False, True, True):
        jit.set_jit(on)
        assert corner(-0.0) and not corner(0.0) and corner(-0.0)


@needs_numba
def test_compiled_direct_makes_no_padded_copy_of_a_float_plane(monkeypatch, restore_jit):
    image = make_image((300, 200), np.float32)
    kernel = KERNELS["diagonal"]
    jit.set_jit(False)
    expected = worker(image, kernel, "direct", pad_mode="wrap")

    def refuse(*args, **kwargs):
        raise AssertionError("a padded tile was filled")

    monkeypatch.setattr(tiles.Padder, "fill", refuse)
    jit.set_jit(True)
    assert_same_bits(worker(image, kernel, "direct", pad_mode="wrap"), expected)


@needs_numba
def test_every_step_kind_runs_compiled():
    # weights that need each step: copy, scale, sum, diff, add, sub, mul, the
    # scratch register both ways, and zero for an empty program
    taps = [((0, 0, 0), 1.0), ((0, 0, 1), 1.0), ((0, 1, 0), -1.0), ((0, 1, 1), 0.5),
            ((0, 2, 0), -0.25), ((0, 2, 1), -0.25), ((0, 0, 2), 3.0), ((0, 1, 2), -3.0)]
    programs = [build_program(taps), build_program(taps[2:3]), build_program(taps[3:4]),
                build_program([((0, 0, 0), -1.0), ((0, 1, 1), -1.0)]),
                build_program([((0, 0, 0), 2.0), ((0, 1, 1), -0.5)]), build_program([]),
                build_program([((0, 0, 0), 1.0)]),
                build_program([((0, 0, 0), 0.5), ((0, 1, 1), 0.5), ((0, 0, 1), 1.0),
                               ((0, 1, 0), -1.0)])]
    ops = {step.op for p in programs for step in p.steps}
    assert ops == set(range(10))
    src = make_image((6, 7), np.float32) - 100  # signs of both kinds, zeros among them
    src[0, :3] = 0.0

    def run(program):
        acc = np.full((4, 5), np.nan, np.float32)
        program.run([src], acc.shape, (1, 1), acc, np.empty_like(acc))
        return acc

    for program in programs:
        with pytest.MonkeyPatch.context() as mp:
            plain, compiled = both_paths(lambda p=program: run(p), mp)
        assert_same_bits(compiled, plain)


def test_settings(monkeypatch, restore_jit):
    monkeypatch.delenv(jit.ENV_VAR, raising=False)
    assert not jit.enabled()  # off unless asked for
    monkeypatch.setenv(jit.ENV_VAR, "0")
    assert not jit.enabled()
    monkeypatch.setenv(jit.ENV_VAR, "yes")
    with pytest.raises(ValueError, match="IMGCONV_JIT must be 0 or 1, got 'yes'"):
        jit.enabled()
    jit.set_jit(False)
    assert not jit.enabled()  # set_jit wins over the environment
    monkeypatch.setattr(jit, "_numba_problem", lambda: "which is not installed")
    jit.set_jit(None)
    monkeypatch.setenv(jit.ENV_VAR, "1")
    with pytest.raises(jit.JitUnavailable, match=r"IMGCONV_JIT=1 needs numba.*imgconv\[jit\]"):
        jit.enabled()
    with pytest.raises(jit.JitUnavailable, match=r"needs numba.*imgconv\[jit\]"):
        jit.set_jit(True)
    with pytest.raises(TypeError, match="set_jit takes True, False or None, not 'yes'"):
        jit.set_jit("yes")


@needs_numba
def test_set_jit_and_environment_turn_it_on(monkeypatch, restore_jit):
    monkeypatch.setenv(jit.ENV_VAR, "1")
    assert jit.enabled()
    jit.set_jit(False)
    assert not jit.enabled()


def test_default_path_never_imports_numba():
    code = ("import sys, numpy as np, imgconv\n"
            "imgconv.correlate(np.ones((300, 300), np.float32), np.ones((3, 3)))\n"
            "print('numba' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != jit.ENV_VAR}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env=env)
    assert result.stdout.strip() == "False"


runner = CliRunner()


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "in.png"
    from PIL import Image

    Image.fromarray(make_image((40, 50, 3), np.uint8)).save(path)
    return path


@needs_numba
def test_cli_jit_flag_gives_the_same_file(tmp_path, photo, restore_jit):
    outs = []
    for flag in ("--no-jit", "--jit"):
        out = tmp_path / f"out{flag}.png"
        result = runner.invoke(app, ["apply", str(photo), "-k", "diagonal-45", "-k", "box-blur",
                                     flag, "-o", str(out)])
        assert result.exit_code == 0, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_cli_jit_without_numba_is_a_usage_error(tmp_path, photo, monkeypatch, restore_jit):
    monkeypatch.setattr(jit, "_numba_problem", lambda: "which is not installed")
    result = runner.invoke(app, ["apply", str(photo), "-k", "sobel-x", "--jit",
                                 "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 2
    assert "--jit: the compiled path needs numba, which is not installed" in result.stderr
    assert isinstance(result.exception, SystemExit)  # a usage error, not a crash
    monkeypatch.setenv(jit.ENV_VAR, "maybe")
    result = runner.invoke(app, ["apply", str(photo), "-k", "sobel-x",
                                 "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 2
    assert "IMGCONV_JIT must be 0 or 1, got 'maybe'" in result.stderr
    assert not (tmp_path / "o.png").exists()


def test_a_broken_numba_is_a_usage_error_too(tmp_path, photo):
    fake = tmp_path / "site" / "numba"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('llvmlite is missing')\n")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    env.pop(jit.ENV_VAR, None)
    out = tmp_path / "o.png"
    done = subprocess.run([sys.executable, "-m", "imgconv", "apply", str(photo), "-k", "sobel-x",
                           "--jit", "-o", str(out)], capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    assert ("--jit: the compiled path needs numba, which fails to import "
            "(ImportError: llvmlite is missing)") in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    # check has no --jit, but IMGCONV_JIT=1 asks for the path just the same
    done = subprocess.run([sys.executable, "-m", "imgconv", "check", str(photo), "-k", "sobel-x"],
                          capture_output=True, text=True, env={**env, jit.ENV_VAR: "1"})
    assert done.returncode == 2, done.stderr
    assert "error: IMGCONV_JIT=1 needs numba, which fails to import" in done.stderr


def test_generated_source_is_written_once_and_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(jit, "cache_dir", lambda: tmp_path / "jit")
    module = jit._import("VALUE = 1\n")
    assert module.VALUE == 1
    (path,) = (tmp_path / "jit").glob("imgconv_jit_*.py")
    assert path.read_text() == "VALUE = 1\n"
    before = path.stat()
    assert jit._import("VALUE = 1\n").VALUE == 1  # read, not written again
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    path.write_text("VALUE = 2\n")  # a file that is not what its name says is replaced
    assert jit._import("VALUE = 1\n").VALUE == 1
    assert path.read_text() == "VALUE = 1\n"


def test_unwritable_cache_falls_back_to_a_temporary_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(jit, "cache_dir", lambda: blocker / "jit")  # cannot be created
    module = jit._import("VALUE = 3\n")
    assert module.VALUE == 3
    assert os.path.dirname(module.__file__) == str(jit._fallback_dir())


def test_a_cache_numba_cannot_use_falls_back_too(tmp_path, monkeypatch):
    # numba raises RuntimeError ("no locator") at import when it cannot cache
    # beside the source: the module is imported again from the fallback folder
    monkeypatch.setattr(jit, "cache_dir", lambda: tmp_path / "jit")
    text = ("if 'imgconv-jit-' not in __file__:\n"
            "    raise RuntimeError('cannot cache function: no locator available')\n"
            "VALUE = 4\n")
    module = jit._import(text)
    assert module.VALUE == 4
    assert os.path.dirname(module.__file__) == str(jit._fallback_dir())
    assert sys.modules[module.__name__] is module


def test_the_fallback_folder_can_be_removed_before_an_immediate_exit():
    folder = jit._fallback_dir()
    assert folder.is_dir()
    jit.remove_fallback_dir()  # what a --jobs worker does before os._exit
    assert not folder.exists()
    jit.remove_fallback_dir()  # nothing left to do
    assert jit._fallback_dir() != folder and jit._fallback_dir().is_dir()


@needs_numba
def test_a_second_process_loads_the_kernels_from_the_disk_cache(tmp_path):
    code = ("import numpy as np, imgconv\n"
            "from imgconv.core import jit\n"
            "jit.set_jit(True)\n"
            "imgconv.correlate(np.ones((40, 50), np.float32), [[1, 2, 1], [0, 0, 0], [-1, 2, 1]])\n"
            "import sys\n"
            "mods = [m for n, m in sys.modules.items() if n.startswith('imgconv_jit_')]\n"
            "print(sum(m.kernel.stats.cache_hits.get(s, 0) for m in mods"
            " for s in m.kernel.signatures),"
            " sum(sum(m.kernel.stats.cache_misses.values()) for m in mods))\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env=env).stdout.split() for _ in range(2)]
    (hits1, misses1), (hits2, misses2) = [(int(a), int(b)) for a, b in runs]
    assert misses1 > 0 and hits1 == 0  # compiled in the first process
    assert hits2 == misses1 and misses2 == 0  # loaded, not compiled, in the second


@needs_numba
def test_a_corrupt_numba_cache_falls_back_to_a_fresh_compile(tmp_path):
    # numba reads its cache at a kernel's first call in each dtype, not at import
    code = ("import numpy as np, imgconv\n"
            "from imgconv.core import jit\n"
            "jit.set_jit(True)\n"
            "x = np.arange(30.0).reshape(5, 6)\n"
            "from imgconv.core import conv\n"
            "for dtype in (np.float32, np.float64):\n"
            "    print(imgconv.correlate(x.astype(dtype), [[1, 2], [3, 4]]).sum())\n"
            # direct's image read in place, and the check of its index maps
            "    print(conv._correlate(x.astype(dtype), [[1, 2], [3, 4]], strategy='direct',\n"
            "          padding='same', pad_mode='reflect', cval=0.0, stride=1, dilation=1,\n"
            "          flip=False).sum())\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env=env)
    cache = tmp_path / "imgconv" / "jit" / "__pycache__"
    # the second dtype's machine code (its first call comes after float32's ran
    # fine), then every index
    for pattern in ("*.2.nbc", "*.nbi"):
        broken = list(cache.glob(pattern))
        assert broken
        for path in broken:
            path.write_bytes(b"garbage")
        for _ in range(2):  # recompiled in a fallback folder; then the cache is whole again
            again = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                   text=True, env=env)
            assert again.returncode == 0, again.stderr
            assert again.stdout == first.stdout
        assert not any(p.read_bytes() == b"garbage" for p in cache.iterdir())


@needs_numba
def test_worker_processes_remove_their_fallback_folders(tmp_path, photo):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    temp = tmp_path / "tmp"
    temp.mkdir()
    second = tmp_path / "second.png"
    second.write_bytes(photo.read_bytes())
    env = {**os.environ, "XDG_CACHE_HOME": str(blocker), "TMPDIR": str(temp)}
    done = subprocess.run([sys.executable, "-m", "imgconv", "apply", str(photo), str(second),
                           "-k", "sobel-x", "--jit", "--jobs", "2",
                           "--out-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").iterdir())) == 2
    assert not list(temp.glob("imgconv-jit-*"))
