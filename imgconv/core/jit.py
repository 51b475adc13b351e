"""The optional compiled path: a tap program run as one numba call per tile.

The numpy executor of :meth:`imgconv.core.taps.Program.run` makes one ufunc
call per :class:`~imgconv.core.steps.Step`, each a pass over the whole tile.
Between those calls the thread holds the GIL, and on a 2-core machine two
threads handing it to each other cost more than a 3x3 kernel's arithmetic.
Here the same steps run in one compiled call that releases the GIL: a kernel
generated for the program's shape (:func:`source`) sums each output pixel in
the CPU's registers and stores it once.

The operations and their order are the numpy executor's exactly, in the same
dtype and without fast-math, so a strategy gives the same bits on both paths;
the tests check that, and run every strategy against scipy with the path on
and off. (With it on, the cost model picks ``direct`` more often, which
rounds differently from ``separable``.)

numba is an optional extra (``pip install 'imgconv[jit]'``), imported only
when the path is first used. Whether it is used is, in order of precedence:
:func:`set_jit` (what the command line's jit switch calls), the
environment variable ``IMGCONV_JIT`` (``1`` or ``0``), then off. It is off by
default because a process pays for it once: importing numba and loading a
kernel from numba's disk cache take longer, and more memory, than a whole
``imgconv apply`` of a 12 MP JPEG without it, and each new program shape
compiles once per machine (tenths of a second). ``benchmarks/bench_core.py``
measures both; README.md ("Compiled path") has the figures.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imgconv.core.env import getenv
from imgconv.core.padding import Mapped
from imgconv.core.spans import flat
from imgconv.core.steps import (
    ADD,
    ADD_SCRATCH,
    COPY,
    DIFF,
    MUL,
    SCALE,
    SUB,
    SUB_SCRATCH,
    SUM,
    ZERO,
    Step,
)

ENV_VAR = "IMGCONV_JIT"

#: the dtypes the compiled kernel takes (an accumulator and its sources alike)
DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int16))

_requested: bool | None = None

#: a kernel's key: its program shape and its variant (see :func:`source`)
Key = tuple[tuple[tuple[int, int], ...], str]


class JitUnavailable(RuntimeError):
    """The compiled path was asked for but numba cannot be imported."""


def installed() -> bool:
    """Whether numba is installed (checked without importing it)."""
    return importlib.util.find_spec("numba") is not None


@functools.cache
def _numba_problem() -> str | None:
    """Why numba cannot be used here, else None; imports it the first time it is asked."""
    if not installed():
        return "which is not installed"
    try:
        import numba  # noqa: F401
    except Exception as exc:  # a broken install: say so now, not from inside a tile
        return f"which fails to import ({type(exc).__name__}: {exc})"
    return None


def set_jit(on: bool | None) -> None:
    """Use the compiled path for every later call (``None``: back to ``IMGCONV_JIT``).

    Raises :class:`JitUnavailable` when ``on`` is true and numba cannot be
    imported (this imports it).
    """
    global _requested
    if on is not None and not isinstance(on, bool):
        raise TypeError(f"set_jit takes True, False or None, not {on!r}")
    if on and (problem := _numba_problem()):
        raise JitUnavailable(
            f"the compiled path needs numba, {problem}: pip install 'imgconv[jit]'"
        )
    _requested = on


def enabled() -> bool:
    """Whether tap programs run compiled: :func:`set_jit`, else ``IMGCONV_JIT``, else off."""
    if _requested is not None:
        return _requested
    value = getenv(ENV_VAR).strip()
    if value in ("", "0"):
        return False
    if value != "1":
        raise ValueError(f"{ENV_VAR} must be 0 or 1, got {value!r}")
    if problem := _numba_problem():
        raise JitUnavailable(
            f"{ENV_VAR}=1 needs numba, {problem}: pip install 'imgconv[jit]'"
        )
    return True


def _tap(tap: tuple[int, int, int] | None) -> tuple[int, int, int]:
    return (0, 0, 0) if tap is None else tap


#: Longer programs (direct sums of large dense kernels, which the cost model
#: sends to the FFT or the separable passes) run on the numpy executor: each
#: program shape is compiled once per machine, at a cost that grows with its
#: steps (docs/performance.md, "How the constants were set").
MAX_STEPS = 64


@functools.lru_cache(maxsize=256)
def _encoded(
    steps: tuple[Step, ...], dtype: np.dtype[Any]
) -> tuple[tuple[tuple[int, int], ...], NDArray[np.int64], NDArray[Any], NDArray[np.int64]]:
    """The steps as the kernel takes them: ``(op, reg)`` pairs, ``(*a, *b)`` rows, weights.

    And the largest source, row and column offset a step reads (to check the
    sources' bounds, which the kernel does not).
    """
    shape = tuple((s.op, s.reg) for s in steps)
    taps = np.array([(*_tap(s.a), *_tap(s.b)) for s in steps], dtype=np.int64).reshape(-1, 6)
    # a ZERO step's register takes its "weight": 0
    weights = np.array([0.0 if s.op == ZERO else s.weight for s in steps], dtype=dtype)
    reads = np.array([t for s in steps for t in (s.a, s.b) if t is not None], np.int64)
    if (reads < 0).any():
        raise ValueError("a tap offset is negative")
    reach = reads.reshape(-1, 3).max(axis=0, initial=-1)  # all -1: reads nothing
    return shape, taps, weights, reach


def run(
    steps: tuple[Step, ...],
    sources: Sequence[NDArray[Any]] | NDArray[Any] | Mapped,
    stride: tuple[int, int],
    acc: NDArray[Any],
) -> bool:
    """Run ``steps`` compiled, as :meth:`~imgconv.core.taps.Program.run` would; False if it can't.

    ``sources`` may also be a :class:`~imgconv.core.padding.Mapped` padded
    plane: the image read in place (:func:`_run_mapped`). Otherwise it can
    when the sources are one 3-D array, or a single 2-D one, in
    ``acc``'s dtype, which is one of :data:`DTYPES` (the strategies' tiles
    always are), ``acc`` is writeable, every row is contiguous and there are
    at most :data:`MAX_STEPS` steps; otherwise the caller runs the numpy
    executor. No scratch buffer: the kernel keeps both registers in the CPU's.
    Raises ValueError when a step would read outside the sources.
    """
    if isinstance(sources, Mapped):
        return _run_mapped(steps, sources, stride, acc)
    if isinstance(sources, np.ndarray) and sources.ndim == 3:
        stack = sources
    elif len(sources) == 1 and sources[0].ndim == 2:
        stack = sources[0][None]
    else:
        return False
    dtype = acc.dtype
    if (dtype not in DTYPES or stack.dtype != dtype or not acc.flags.writeable
            or len(steps) > MAX_STEPS):
        return False
    if acc.size == 0:
        return True
    shape, taps, weights, reach = _encoded(steps, dtype)
    rows, cols = acc.shape
    sy, sx = stride
    if sy < 1 or sx < 1:
        raise ValueError(f"strides must be >= 1, got {stride}")
    last = (int(reach[0]), int(reach[1]) + (rows - 1) * sy, int(reach[2]) + (cols - 1) * sx)
    if reach[0] >= 0 and any(i >= n for i, n in zip(last, stack.shape, strict=True)):
        raise ValueError(f"the program reads up to index {last} of sources of shape "
                         f"{stack.shape}")
    # the sources always as read-only views: one compiled variant per dtype
    src, dst = flat(stack, writeable=False), flat(acc, writeable=True)
    if src is None or dst is None:
        return False
    variant = "unit" if sx == 1 else "dense" if sx <= DENSE_MAX_STRIDE else "gather"
    _call((shape, variant), dtype, (src[0], src[1][0], src[1][1], sy, sx, taps, weights,
                                    dst[0], dst[1][0], rows, cols))
    return True


def _run_mapped(
    steps: tuple[Step, ...], view: Mapped, stride: tuple[int, int], acc: NDArray[Any]
) -> bool:
    """:func:`run` over a padded plane given as the image and its index maps (:class:`Mapped`).

    The image rows are read where they are: no padded copy of the tile is
    made. Column stride 1 only; the steps must read one source.
    """
    plane, dtype = view.plane, acc.dtype
    if (dtype not in DTYPES or plane.dtype != dtype or not acc.flags.writeable
            or len(steps) > MAX_STEPS or stride[1] != 1 or plane.ndim != 2
            or not plane.shape[1]):
        return False
    if acc.size == 0:
        return True
    shape, taps, weights, reach = _encoded(steps, dtype)
    rows, cols = acc.shape
    sy = stride[0]
    if sy < 1:
        raise ValueError(f"strides must be >= 1, got {stride}")
    last = (int(reach[0]), view.p0 + int(reach[1]) + (rows - 1) * sy, int(reach[2]) + cols - 1)
    (cl, cr), (h, width) = view.interior, plane.shape
    # (checked whether the program reads or not: the kernel writes them all)
    if not 0 <= cl <= cr <= cols or view.p0 < 0:
        raise ValueError(f"the interior columns {cl}..{cr} or the first padded row {view.p0} "
                         f"lie outside the {cols} output columns or the padded plane")
    interior_ok = cr == cl or (cl >= view.left and cr - 1 + int(reach[2]) - view.left < width)
    if reach[0] >= 0 and (last[0] > 0 or last[1] >= len(view.rows) or last[2] >= len(view.cols)
                          or not interior_ok):
        raise ValueError(f"the program reads up to index {last} of a padded plane of "
                         f"{len(view.rows)} rows and {len(view.cols)} columns")
    # the kernel takes the maps' indices unchecked: checked here, compiled (a
    # microsecond; numpy's min and max took 8 a tile)
    rows_used = view.rows[view.p0 : last[1] + 1]
    if len(view.fill) != width or not _call(((), "check"), rows_used.dtype, (
            rows_used, h, view.cols, width, view.border, cols)):
        raise ValueError("the index maps point outside the image or the output")
    src, dst = flat(plane, writeable=False), flat(acc, writeable=True)
    if src is None or dst is None:
        return False
    _call((shape, "mapped"), dtype, (
        src[0], src[1][0], width, view.rows, view.cols, view.fill, view.p0, sy,
        cl, cr, view.left, view.border, taps, weights, dst[0], dst[1][0], rows, cols))
    return True


#: (kernel key, dtype) pairs that have run once in this process: numba loads
#: (or compiles) each dtype's machine code at that dtype's first call
_proven: set[tuple[Key, np.dtype[Any]]] = set()


def _call(key: Key, dtype: np.dtype[Any], args: tuple[Any, ...]) -> Any:
    """Call the kernel for ``key``; if its first call in a dtype fails, again from the fallback.

    numba reads its cache at the first call in each dtype, not at import, so a
    cache it cannot read (a corrupt index, say) shows there. That cache's
    files are then removed, so that the next process compiles the kernel
    afresh, and this process imports it anew from :func:`_fallback_dir`, with
    a cache of its own. Returns what the kernel returns.
    """
    fn = kernel(*key)
    proof = (key, dtype)
    if proof in _proven:
        return fn(*args)
    try:
        result = fn(*args)
    except Exception:
        with _lock:
            if _kernels.get(key) is fn:  # not yet replaced by another thread
                _forget_cache(fn)
                _kernels[key] = _import_from(_fallback_dir(), source(*key)).kernel
            fn = _kernels[key]
        result = fn(*args)  # fails again: a real error, raised
    _proven.add(proof)
    return result


def _forget_cache(fn: Any) -> None:
    """Remove numba's cache files of the kernel ``fn`` (they are named after its module)."""
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    path = getattr(module, "__file__", None)
    if not path:
        return
    import contextlib

    for stale in (Path(path).parent / "__pycache__").glob(Path(path).stem + ".*"):
        with contextlib.suppress(OSError):  # a folder we may not write: left as it is
            stale.unlink()


_lock = threading.Lock()
_kernels: dict[Key, Any] = {}


def kernel(shape: tuple[tuple[int, int], ...], variant: str = "unit") -> Any:
    """The compiled kernel for a program of this shape (its ``(op, reg)`` pairs).

    ``variant`` is how it takes a column stride ``sx`` (:func:`source`). Its
    source is written once to :func:`cache_dir` and imported from there, so
    that numba caches its machine code on disk beside it: a later process
    loads it instead of compiling it again.
    """
    key = (shape, variant)
    found = _kernels.get(key)
    if found is None:
        with _lock:  # the pool's threads may ask for the same new kernel at once
            found = _kernels.get(key)
            if found is None:
                found = _kernels[key] = _import(source(shape, variant)).kernel
    return found


#: Column strides up to this compute every column of a row (the loop LLVM
#: vectorizes) and keep every ``sx``-th; larger ones read only the columns
#: they keep: the two break even near a stride of 12 (docs/performance.md,
#: "How the constants were set").
DENSE_MAX_STRIDE = 8


def source(shape: tuple[tuple[int, int], ...], variant: str = "unit") -> str:
    """Python source of the kernel for one program shape, for numba to compile.

    Every step becomes one line of the loop over a row's columns, on two
    scalar registers ``x`` (the accumulator) and ``s`` (the scratch), in the
    order and dtype of the numpy executor: the same operations, so the same
    bits, but each output is summed in the CPU's registers and stored once
    rather than passed over once per step. The taps and weights stay
    run-time arrays, so every program of the same shape shares the kernel
    (box 3x3 and any other 3x3 of equal weights, say).

    ``variant``: ``"unit"`` for column stride 1; ``"dense"`` sums every
    column of a row into a row buffer and keeps every ``sx``-th (the same
    sums: a contiguous loop is several times faster than a strided one);
    ``"gather"`` reads only every ``sx``-th column (for wide strides);
    ``"mapped"`` reads the image in place through index maps
    (:func:`_mapped_source`); ``"check"`` (any ``shape``) checks those maps.

    >>> print(source(((SUM, 0), (MUL, 0))).split("for c in range(cols):")[1].strip())
    x = a0[c] + b0[c]
                x = x * w1
                o[c] = x
    """
    if variant == "mapped":
        return _mapped_source(shape)
    if variant == "check":
        return _CHECK_SOURCE
    views = []
    loop = []
    span = "cols" if variant == "unit" else "(cols - 1) * sx + 1"
    col = "c * sx" if variant == "gather" else "c"
    for k, (op, reg) in enumerate(shape):
        operands = OPERANDS.get(op, 0)
        for n in range(operands):
            name, j = "ab"[n] + str(k), 3 * n
            views += [f"        i = (taps[{k}, {j}] * src_pitch + (r * sy + taps[{k}, {j + 1}])"
                      f" * row_pitch + taps[{k}, {j + 2}])",
                      f"        {name} = src[i : i + {span}]"]
        if op in (SCALE, MUL, ZERO):
            views.append(f"        w{k} = w[{k}]")
        loop.append(_statement(op, reg, k, f"a{k}[{col}]", f"b{k}[{col}]"))
    if variant == "dense":
        before = ["    line = np.empty((cols - 1) * sx + 1, acc.dtype)"]
        body = [f"        for c in range({span}):", *loop, "            line[c] = x",
                "        for c in range(cols):", "            o[c] = line[c * sx]"]
    else:
        before = []
        body = ["        for c in range(cols):", *loop, "            o[c] = x"]
    return "\n".join([
        f'"""A tap program kernel generated by imgconv.core.jit for {shape} ({variant})."""',
        "",
        "import numba",
        "import numpy as np",
        "",
        "",
        "@numba.njit(nogil=True, cache=True)",
        "def kernel(src, src_pitch, row_pitch, sy, sx, taps, w, acc, acc_pitch, rows, cols):",
        *before,
        "    for r in range(rows):",
        "        o = acc[r * acc_pitch : r * acc_pitch + cols]",
        *views,
        *body,
        "",
    ])


#: How many of a step's taps (``a``, ``b``) each kind reads from the sources
OPERANDS = {SUM: 2, DIFF: 2, COPY: 1, SCALE: 1, ADD: 1, SUB: 1}


def _statement(op: int, reg: int, k: int, a: str, b: str) -> str:
    """Step ``k``'s line of a kernel's loop: its register's new value from ``a`` and ``b``
    (the expressions that read its taps), as :class:`~imgconv.core.steps.Step` defines."""
    r, w = "x" if reg == 0 else "s", f"w{k}"
    return f"            {r} = " + {
        COPY: a, SCALE: f"{a} * {w}", SUM: f"{a} + {b}", DIFF: f"{a} - {b}",
        ADD: f"{r} + {a}", SUB: f"{r} - {a}", MUL: f"{r} * {w}", ZERO: w,
        ADD_SCRATCH: "x + s", SUB_SCRATCH: "x - s"}[op]


def _mapped_source(shape: tuple[tuple[int, int], ...]) -> str:
    """:func:`source`'s ``"mapped"`` variant: the image read in place through index maps.

    Each tap's source row is the image row the row map gives (or ``fill``, a
    row of the constant, for ``-1``). The interior columns, whose taps all read
    image columns, run the contiguous loop LLVM vectorizes, on slices of
    those rows; the few border columns look each tap's column up in the
    column map. The same steps in the same order as every other variant.
    The kernel checks no index: :func:`_run_mapped` checks the maps first.
    """
    views: list[str] = []
    middle: list[str] = []
    edge: list[str] = []
    for k, (op, reg) in enumerate(shape):
        operands = OPERANDS.get(op, 0)
        for n in range(operands):
            name, j = "ab"[n] + str(k), 3 * n
            views += [f"        i = row_map[p + taps[{k}, {j + 1}]]",
                      f"        row_{name} = src[i * row_pitch : i * row_pitch + width]"
                      f" if i >= 0 else fill",
                      f"        t_{name} = taps[{k}, {j + 2}]",
                      f"        {name} = row_{name}[cl + t_{name} - left : cr + t_{name} - left]"]
        if op in (SCALE, MUL, ZERO):
            views.append(f"        w{k} = w[{k}]")
        middle.append(_statement(op, reg, k, f"a{k}[c]", f"b{k}[c]"))
        edge.append(_statement(op, reg, k, f"at(row_a{k}, col_map[c + t_a{k}], cv)",
                               f"at(row_b{k}, col_map[c + t_b{k}], cv)"))
    return "\n".join([
        f'"""A tap program kernel generated by imgconv.core.jit for {shape} (mapped)."""',
        "",
        "import numba",
        "",
        "",
        "@numba.njit(nogil=True, cache=True, inline='always')",
        "def at(row, i, cv):",
        "    return row[i] if i >= 0 else cv",
        "",
        "",
        "@numba.njit(nogil=True, cache=True)",
        "def kernel(src, row_pitch, width, row_map, col_map, fill, p0, sy, cl, cr, left, border,",
        "           taps, w, acc, acc_pitch, rows, cols):",
        "    cv = fill[0]",
        "    for r in range(rows):",
        "        o = acc[r * acc_pitch : r * acc_pitch + cols]",
        "        p = p0 + r * sy",
        *views,
        "        mid = o[cl:cr]",
        "        for c in range(cr - cl):",
        *middle,
        "            mid[c] = x",
        "        for c in border:",
        *edge,
        "            o[c] = x",
        "",
    ])


#: :func:`source`'s ``"check"`` variant: whether :func:`_run_mapped`'s index maps
#: stay inside the image and the output (one kernel, whatever the program).
_CHECK_SOURCE = """\"\"\"The index maps' check, generated by imgconv.core.jit.\"\"\"

import numba


@numba.njit(nogil=True, cache=True)
def kernel(rows, height, cols, width, border, out_cols):
    for i in rows:
        if i < -1 or i >= height:
            return False
    for i in cols:
        if i < -1 or i >= width:
            return False
    for i in border:
        if i < 0 or i >= out_cols:
            return False
    return True
"""


def cache_dir() -> Path:
    """Where generated kernels and numba's cache of them live: ``$XDG_CACHE_HOME/imgconv/jit``.

    ``~/.cache/imgconv/jit`` when ``XDG_CACHE_HOME`` is unset. A folder that
    cannot be written is replaced by a temporary one for the process (kernels
    are then compiled anew by each process).
    """
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "imgconv" / "jit"


#: each process's fallback folder and the finalizer that removes it
_fallback: dict[int, tuple[Path, Any]] = {}


def _fallback_dir() -> Path:
    """A temporary folder for this process's kernels, removed when it exits.

    One per process: a worker process of a batch makes its own, and
    removes it as it exits (multiprocessing runs its finalizers, not atexit's;
    :func:`remove_fallback_dir` runs it before an ``os._exit``).
    """
    import shutil
    import tempfile
    from multiprocessing import util

    pid = os.getpid()
    if pid not in _fallback:
        path = tempfile.mkdtemp(prefix="imgconv-jit-")
        # a Finalize runs at the exit of the process that made it, and only there
        _fallback[pid] = (Path(path), util.Finalize(
            None, shutil.rmtree, args=(path,), kwargs={"ignore_errors": True}, exitpriority=0))
    return _fallback[pid][0]


def remove_fallback_dir() -> None:
    """Remove this process's fallback folder now, if it has one (before an ``os._exit``)."""
    found = _fallback.pop(os.getpid(), None)
    if found is not None:
        found[1]()  # the finalizer: runs once, then is forgotten


def _write(folder: Path, name: str, text: str) -> Path:
    """``folder/name`` holding ``text``: kept if it already does, else written atomically."""
    import tempfile

    path = folder / name
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _import(text: str) -> Any:
    """Import the module whose source is ``text`` from a file named by its hash.

    From :func:`cache_dir`, else (it cannot be written, or numba cannot
    cache there) from :func:`_fallback_dir`.
    """
    try:
        return _import_from(cache_dir(), text)
    except (OSError, RuntimeError):  # numba: "cannot cache function ...: no locator"
        return _import_from(_fallback_dir(), text)


def _import_from(folder: Path, text: str) -> Any:
    """Import ``text`` as a module from ``folder``, in a file named by the text's hash."""
    import hashlib  # here: it loads OpenSSL, which the numpy path never needs

    name = "imgconv_jit_" + hashlib.sha256(text.encode()).hexdigest()[:20]
    path = _write(folder, name + ".py", text)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # registered first, as an import would: numba's disk cache finds the
    # module again by name when it loads the compiled code in a later process
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
