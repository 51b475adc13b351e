"""Time imgconv's correlate against scipy.ndimage and OpenCV over a sweep of float32 sizes.

Run ``python benchmarks/bench_core.py`` (``--help`` for options; ``--size
3000x4000`` for one size, ``--markdown`` for the table docs/performance.md
shows, with issue 19's goals marked met or not). For each size of the sweep
(28x28 to 3000x4000) and each of its kernels it prints the median time of imgconv.correlate, of
scipy.ndimage.correlate, of OpenCV's cv2.filter2D when ``opencv-python-headless``
is installed (never a dependency), and of ``np.copyto`` (one read and one write
of the image: the memory floor), with the ratios the goals are stated in. Every
imgconv result is checked against scipy's (max abs error), and OpenCV's too, so
a fast wrong answer shows. When numba is installed (``pip install
'imgconv[jit]'``) imgconv is also timed with its compiled path on, its result
compared with the numpy path's bit for bit, and its one-off start-up per
process printed (warm disk cache, and empty cache: the first-run compile).
Times are medians over ``--repeats`` runs, with imgconv (both paths),
np.copyto and OpenCV interleaved run by run, because a shared machine is
noisy: the ratios compare runs made under the same load. ``--under-load``
times instead box 15x15 on 4000x6000 idle and beside one busy process.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np
import scipy
from scipy import ndimage as ndi

import imgconv
from imgconv.core import conv, jit, set_threads
from imgconv.core.strategies import STRATEGIES, choose_strategy
from imgconv.core.threads import get_threads
from imgconv.kernels import resolve

try:
    import cv2
except ImportError:  # optional
    cv2 = None


def kernels(seed: int = 0) -> dict[str, np.ndarray]:
    """The kernels of issue 5, and a gaussian of sigma 1 (7x7) as the kernel library makes it."""
    g1 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    return {
        "box 3x3": np.ones((3, 3)) / 9,
        "sobel-x 3x3": np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]),
        "diagonal 3x3": np.array([[-1.0, -1, 2], [-1, 2, -1], [2, -1, -1]]),
        "gaussian 5x5": np.outer(g1, g1),
        # real float weights (not dyadic): rank 1 only to the working dtype's precision
        "gaussian s=1": np.asarray(resolve("gaussian:sigma=1").weights, dtype=np.float64),
        "box 15x15": np.ones((15, 15)) / 225,
        "random 31x31": np.random.default_rng(seed).standard_normal((31, 31)) / 31,
    }


def median_ms(func: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time in ms over ``repeats`` calls (after one warm-up), and the last result."""
    result = func()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def paired_ms(funcs: list[Callable[[], Any]], repeats: int) -> list[tuple[float, Any]]:
    """Like :func:`median_ms` for several functions, interleaved run by run.

    On a shared machine the load changes from second to second; alternating
    the contenders makes each ratio compare runs made under the same load.
    """
    results = [f() for f in funcs]
    times: list[list[float]] = [[] for _ in funcs]
    for _ in range(repeats):
        for i, f in enumerate(funcs):
            start = time.perf_counter()
            results[i] = f()
            times[i].append((time.perf_counter() - start) * 1e3)
    return [(statistics.median(t), r) for t, r in zip(times, results, strict=True)]


def with_jit(func: Callable[[], Any]) -> Any:
    """``func()`` with the compiled path on."""
    jit.set_jit(True)
    try:
        return func()
    finally:
        jit.set_jit(None)


def jit_start_up() -> tuple[float, float]:
    """Seconds a fresh process spends on the compiled path before its first tile.

    ``(warm, cold)``: the first compiled box 3x3 of a process, after numpy and
    imgconv are imported: importing numba and loading the box's kernel from
    the disk cache (warm), or compiling it (cold: ``XDG_CACHE_HOME`` a new
    folder), which is what the first run of a kernel shape on a machine pays.
    Each is the median of 3 fresh processes.
    """
    code = ("import time, numpy as np, imgconv\n"
            "from imgconv.core import set_jit\n"
            "x = np.ones((64, 64), np.float32)\n"
            "imgconv.correlate(x, np.ones((3, 3)) / 9)\n"  # imgconv's own first-call set-up
            "t = time.perf_counter()\n"
            "set_jit(True)\n"
            "imgconv.correlate(x, np.ones((3, 3)) / 9)\n"
            "print(time.perf_counter() - t)")

    def once(env: dict[str, str]) -> float:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env=env)
        return float(done.stdout)

    once(dict(os.environ))  # fills the cache if it is empty
    warm = statistics.median(once(dict(os.environ)) for _ in range(3))
    colds = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as cache:
            colds.append(once({**os.environ, "XDG_CACHE_HOME": cache}))
    return warm, statistics.median(colds)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    parts = [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, imgconv threads {get_threads()}",
        f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"OpenCV {cv2.__version__ if cv2 is not None else 'not installed'}, {platform.system()}",
    ]
    return "\n".join(parts)


#: The size sweep of issue 19 (H x W), and its kernels.
SWEEP = ((28, 28), (64, 64), (256, 256), (512, 512), (1500, 2000), (3000, 4000))
SWEEP_KERNELS = ("box 3x3", "sobel-x 3x3", "diagonal 3x3", "gaussian 5x5", "box 15x15",
                 "random 31x31")


def goal(h: int, w: int, ours: float, comp: float, theirs: float, cv_ms: float) -> str:
    """Issue 19's goals for this size, each with its figure: ``met`` or ``NOT met``."""
    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    parts = []
    if h * w <= 64 * 64:
        parts.append(f"<=1.5x scipy: {ours / theirs:.2f}x {mark(ours <= 1.5 * theirs)}")
    elif h * w <= 512 * 512:
        parts.append(f">=2x faster than scipy: {theirs / ours:.1f}x {mark(theirs >= 2 * ours)}")
    else:
        parts.append(f">=5x faster than scipy: {theirs / ours:.1f}x {mark(theirs >= 5 * ours)}")
        if cv_ms == cv_ms:
            parts.append(f"<=1.5x OpenCV: {ours / cv_ms:.2f}x {mark(ours <= 1.5 * cv_ms)}")
    if h * w >= 512 * 512 and comp == comp and cv_ms == cv_ms:
        parts.append(f"compiled <=1.5x OpenCV: {comp / cv_ms:.2f}x {mark(comp <= 1.5 * cv_ms)}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default=None,
                        help="one image HxW (default: the sweep of issue 19, 28x28 to 3000x4000)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated HxW sizes, e.g. '28x28,512x512'")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    parser.add_argument("--mode", default="reflect", help="pad_mode (default reflect)")
    parser.add_argument("--threads", type=int, default=None, help="imgconv threads")
    parser.add_argument("--strategies", action="store_true",
                        help="also time every imgconv strategy on every kernel")
    parser.add_argument("--kernels", default=None,
                        help="comma-separated subset of kernel names, e.g. 'box 3x3,box 15x15' "
                             "(default: the sweep's six; 'all' adds gaussian s=1)")
    parser.add_argument("--no-jit", action="store_true",
                        help="do not time the compiled path even if numba is installed")
    parser.add_argument("--no-scipy", action="store_true",
                        help="skip timing scipy (slow); results are still checked against it")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the table in Markdown, with issue 19's goals marked")
    parser.add_argument("--under-load", action="store_true",
                        help="only time box 15x15 on 4000x6000 idle, beside one busy process, "
                             "and idle again (issue 19's goal: at most 2x the idle time)")
    args = parser.parse_args(argv)
    if args.under_load:
        set_threads(args.threads)
        print(machine())
        under_load(max(args.repeats, 7))
        return 0
    if args.size:
        sizes = [tuple(int(v) for v in args.size.lower().split("x"))]
    elif args.sizes:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    else:
        sizes = list(SWEEP)
    set_threads(args.threads)

    print(machine())
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the start")
    print(f"float32, pad_mode={args.mode}; each time is the median of {args.repeats} samples "
          f"(each sample the mean of as many calls as take ~20 ms, up to 2000)\n")

    selected = kernels()
    if args.kernels == "all":
        pass
    elif args.kernels:
        wanted = [k.strip() for k in args.kernels.split(",")]
        selected = {k: v for k, v in selected.items() if k in wanted}
    else:
        selected = {k: v for k, v in selected.items() if k in SWEEP_KERNELS}
    compiled = jit.installed() and not args.no_jit
    if compiled:
        warm, cold = jit_start_up()
        print(f"compiled path (numba {metadata.version('numba')}): start-up {warm:.2f} s per "
              f"process (import numba, load a box 3x3's kernel from the disk cache), "
              f"{cold:.2f} s the first time on a machine (compile it)\n")
    else:
        print("compiled path not timed: " + ("--no-jit" if args.no_jit else
              "numba is not installed (pip install 'imgconv[jit]')") + "\n")
    header = (f"{'size':>9} {'kernel':<13} {'strategy':>9} {'imgconv':>9} {'compiled':>9} "
              f"{'scipy':>9} {'OpenCV':>9} {'copyto':>8} {'scipy/imgconv':>13} "
              f"{'imgconv/OpenCV':>14} {'scipy/comp':>10} {'comp/OpenCV':>11} "
              f"{'err vs scipy':>12} {'comp bits':>9} {'cv2 err':>8}")
    print(header)
    print("-" * len(header))
    rows = []
    for h, w in sizes:
        image = (np.random.default_rng(1).random((h, w)) * 255).astype(np.float32)
        out = np.empty_like(image)
        # small images: each sample times enough calls of each contender to last ~20 ms
        calls = 2000
        size = f"{h}x{w}"
        for name, kernel in selected.items():
            rows.append(one_cell(args, image, out, size, name, kernel, compiled, calls))
    print("\ntimes in ms; strategy a/b: the numpy path's choice / the compiled path's; "
          "compiled = imgconv with the compiled path on (IMGCONV_JIT=1); "
          "err = max |difference| from scipy.ndimage.correlate (float64 of it); comp bits: "
          "whether the compiled path's result equals the numpy path's bit for bit")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end")
    if args.markdown:
        print("\n| size | kernel | strategy | imgconv ms | compiled ms | scipy ms | OpenCV ms | "
              "scipy/imgconv | imgconv/OpenCV | compiled/OpenCV | goals (issue 19) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['size']} | {r['kernel']} | {r['strategy']} | {fmt(r['ours'])} | "
                  f"{fmt(r['comp'])} | {fmt(r['theirs'])} | {fmt(r['cv'])} | "
                  f"{r['theirs'] / r['ours']:.1f} | {r['ours'] / r['cv']:.2f} | "
                  f"{r['comp'] / r['cv']:.2f} | {r['goal']} |")
    return 0


def under_load(repeats: int) -> None:
    """Box 15x15 on 4000x6000 float32: idle, beside one busy process, idle again.

    The busy process is a Python loop (``while True: pass``) started here and
    killed before the second idle run; each time is a median of ``repeats``.
    """
    image = (np.random.default_rng(1).random((4000, 6000)) * 255).astype(np.float32)
    kernel = kernels()["box 15x15"]

    def run() -> Any:
        return imgconv.correlate(image, kernel)

    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the start")
    before = median_ms(run, repeats)[0]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        loaded = median_ms(run, repeats)[0]
    finally:
        busy.kill()
        busy.wait()
    after = median_ms(run, repeats)[0]
    idle = statistics.mean([before, after])
    ratio = loaded / idle
    print(f"box 15x15 on 4000x6000 float32, medians of {repeats}: idle {before:.1f} ms, beside "
          f"one busy process {loaded:.1f} ms, idle again {after:.1f} ms: {ratio:.2f}x the idle "
          f"time (goal <= 2x: {'met' if ratio <= 2 else 'NOT met'})")


def calls_for(func: Callable[[], Any], most: int) -> int:
    """How many calls of ``func`` one sample times: about 20 ms of them, at most ``most``."""
    func()
    start = time.perf_counter()
    func()
    return max(1, min(most, int(0.02 / max(1e-7, time.perf_counter() - start))))


def many(func: Callable[[], Any], n: int) -> Callable[[], Any]:
    """``func`` called ``n`` times; returns the last result."""
    if n == 1:
        return func

    def run() -> Any:
        for _ in range(n - 1):
            func()
        return func()
    return run


def fmt(ms: float) -> str:
    """A time in ms with three significant figures (microseconds below 1 ms)."""
    if ms != ms:
        return "-"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def one_cell(args: argparse.Namespace, image: np.ndarray, out: np.ndarray, size: str,
             name: str, kernel: np.ndarray, compiled: bool, calls: int) -> dict[str, Any]:
    """Time one size and kernel, print its row and return its figures."""
    h, w = image.shape
    k32 = kernel.astype(np.float32)

    def repeated(func: Callable[[], Any]) -> Callable[[], Any]:
        return func

    contenders = [repeated(lambda k=kernel: imgconv.correlate(image, k, pad_mode=args.mode)),
                  repeated(lambda: np.copyto(out, image))]
    use_cv = cv2 is not None and args.mode == "reflect"
    if use_cv:
        # BORDER_REFLECT is scipy's reflect (fedcba|abcdef); anchor = k // 2 as scipy's
        anchor = (k32.shape[1] // 2, k32.shape[0] // 2)
        contenders.append(repeated(lambda k=k32, a=anchor: cv2.filter2D(
            image, -1, k, anchor=a, borderType=cv2.BORDER_REFLECT)))
    if compiled:
        contenders.append(repeated(lambda k=kernel: with_jit(
            lambda: imgconv.correlate(image, k, pad_mode=args.mode))))
    # scipy is interleaved too where it is quick (up to 512x512), else timed on its own
    quick_scipy = not args.no_scipy and h * w <= 512 * 512
    if quick_scipy:
        contenders.append(repeated(lambda k=k32: ndi.correlate(image, k, mode=args.mode)))
    counts = [calls_for(f, calls) for f in contenders]
    timed = [(ms / n, r) for (ms, r), n in zip(
        paired_ms([many(f, n) for f, n in zip(contenders, counts, strict=True)], args.repeats),
        counts, strict=True)]
    (ours, result), (floor, _) = timed[0], timed[1]
    comp_ms, comp_bits = float("nan"), "-"
    if compiled:
        comp_ms, comp_out = timed[3 if use_cv else 2]
        # as integers: a signed zero that differs counts (the image has no NaNs)
        comp_bits = ("same" if np.array_equal(comp_out.view(np.uint32), result.view(np.uint32))
                     else "differ")
    if quick_scipy:
        theirs, expected = timed[-1]
    elif args.no_scipy:
        theirs = float("nan")
        expected = ndi.correlate(image, k32, mode=args.mode)
    else:
        theirs, expected = median_ms(
            lambda k=k32: ndi.correlate(image, k, mode=args.mode), max(1, args.repeats // 2)
        )
    err = float(np.abs(result.astype(np.float64) - expected).max())
    cv_ms, cv_err = float("nan"), float("nan")
    if use_cv:
        cv_ms, cv_out = timed[2]
        cv_err = float(np.abs(cv_out.astype(np.float64) - expected).max())
    geom = imgconv.core.Geometry((h, w), k32.shape, (k32.shape[0] // 2, (k32.shape[0] - 1) // 2,
                                 k32.shape[1] // 2, (k32.shape[1] - 1) // 2), (1, 1), (1, 1))
    label = choose_strategy(k32, geom, in_place=True)  # (a float32 C-contiguous image)
    if compiled:
        on_jit = with_jit(lambda k=k32, g=geom: choose_strategy(k, g, in_place=True))
        label = label if on_jit == label else f"{label[:3]}/{on_jit[:3]}"
    print(f"{size:>9} {name:<13} {label:>9} {fmt(ours):>9} {fmt(comp_ms):>9} "
          f"{fmt(theirs):>9} {fmt(cv_ms):>9} {fmt(floor):>8} {theirs / ours:>13.1f} "
          f"{ours / cv_ms:>14.2f} {theirs / comp_ms:>10.1f} {comp_ms / cv_ms:>11.2f} "
          f"{err:>12.2e} {comp_bits:>9} {cv_err:>8.1e}", flush=True)
    if args.strategies:
        for strategy in STRATEGIES:
            ms, res = median_ms(
                lambda k=kernel, s=strategy: conv._correlate(
                    image, k, padding="same", pad_mode=args.mode, cval=0.0, stride=1,
                    dilation=1, flip=False, strategy=s),
                args.repeats,
            )
            e = float(np.abs(res.astype(np.float64) - expected).max())
            print(f"{'':>9} {'':<13} {strategy:>9} {fmt(ms):>9} {'':>9} {'':>9} {'':>9} "
                  f"{'':>8} {theirs / ms:>13.1f} {ms / cv_ms:>14.2f}      {'':>10} {'':>11} "
                  f"{e:>12.2e}")
    return {"size": size, "kernel": name, "strategy": label, "ours": ours, "comp": comp_ms,
            "theirs": theirs, "cv": cv_ms, "goal": goal(h, w, ours, comp_ms, theirs, cv_ms)}


if __name__ == "__main__":
    sys.exit(main())
