"""Filter gigapixel TIFFs with imgconv's tiled path and with libvips: time, MP/s, peak memory.

Run ``python benchmarks/bench_huge.py`` (``--help`` for options; ``--sizes 0.01``
for a quick check, ``--markdown`` for a Markdown table too). It needs tifffile
and imagecodecs, and the ``vips`` command (``apt-get install libvips-tools``;
never a dependency of imgconv). It makes, once, in ``--data``, 8-bit RGB
BigTIFFs of 0.1, 0.5 and 1 gigapixel (8661x11548, 19365x25820, 27387x36516),
256x256 deflate tiles, written tile by tile so that no image is ever held:
smooth sines plus Gaussian noise (sigma 5), which deflate compresses as
much as a photograph (1.2x). For each size and each of ``sobel-x`` and
``gaussian:sigma=3`` it reads the input once (a warm page cache for both) and
runs, alternating, each in a fresh process and writing 256x256 deflate tiles:

- ``imgconv apply IN -k KERNEL -o OUT.tif --tiles ...`` (:func:`imgconv_command`,
  the one place to adjust it);
- ``vips conv`` or ``convsep`` ``IN OUT.tif[tile,...] MASK.mat --precision
  integer``, the mask made from imgconv's own weights. vips correlates as
  imgconv does (no flip), repeats the edge pixels (so imgconv runs with
  ``--pad-mode nearest``) and clips an 8-bit result (so ``--output-map clip``;
  sobel-x's default is ``abs``). sobel-x goes to ``conv`` as its integer 3x3;
  the gaussian, outer(g, g), to ``convsep`` with g, as ``vips gaussblur`` does
  (a 19x19 ``conv`` is 6x slower: no fair match for imgconv's separable path).
  Integer precision is vips's way with 8-bit images (gaussblur's default) and
  the only one that writes 8 bits, not floats (``--vips-precision float``
  runs float anyway); g is scaled to integers, the largest 255, and vips rounds
  its first pass to 8 bits: within 2 grey levels of the float weights' result.

Wall time, MP/s and peak RSS (of the command's processes, the largest of them,
read with ``RUSAGE_CHILDREN`` by a small wrapper process per run) are medians
of ``--repeat`` runs. Up to ``--check-max`` gigapixels the two outputs are read
back and their largest difference printed, so a fast wrong answer shows. Both
use every core (vips's default; imgconv's for one file). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from imgconv.kernels import resolve, separable_factors

REPO = Path(__file__).resolve().parent.parent
KERNELS = ("sobel-x", "gaussian:sigma=3")
TILE = 256
_NEXT_TO_PYTHON = Path(sys.executable).parent / "imgconv"
IMGCONV = [str(_NEXT_TO_PYTHON)] if _NEXT_TO_PYTHON.exists() else [sys.executable, "-m", "imgconv"]

# Runs a command and prints its wall time and peak RSS (KiB on Linux) as JSON. In a process of
# its own, so that RUSAGE_CHILDREN covers this one command only.
MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
try:
    run = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, errors="replace")
    rc, err = run.returncode, run.stderr.strip()[-300:]
except OSError as exc:
    rc, err = 127, str(exc)
print(json.dumps({"rc": rc, "wall": time.perf_counter() - start, "err": err,
                  "rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


# ---------------------------------------------------------------------------------------------
# THE imgconv COMMAND LINE that is timed: adjust it here as the tiled path's options settle.
# Its TIFF output is 256x256 deflate tiles, no predictor, as vips is told to write (below).
def imgconv_command(src: Path, dst: Path, kernel: str) -> list[str]:
    return [*IMGCONV, "apply", str(src), "-k", kernel, "-o", str(dst), "--tiles", "--overwrite",
            "--compression", "deflate",
            "--pad-mode", "nearest",  # what vips conv does at the borders
            "--output-map", "clip",  # what vips conv does to an 8-bit result
            "-q"]
# ---------------------------------------------------------------------------------------------


def vips_command(src: Path, dst: Path, kernel: str, mask: Path, precision: str) -> list[str]:
    """``vips conv`` (``convsep`` with v for an outer(v, v)) of imgconv's weights, not flipped.

    vips conv computes out(y, x) = sum m(i, j) in(y + i - cy, x + j - cx) / scale, a correlation
    as imgconv's (checked: an asymmetric mask gives imgconv.correlate's result, not its flip's).
    """
    weights = np.asarray(resolve(kernel).weights, dtype=np.float64)
    factors = separable_factors(weights)
    operation = "conv"
    if factors is not None and np.allclose(*factors, rtol=1e-9, atol=1e-12):
        operation, weights = "convsep", factors[1][None, :]
    scale = 1.0
    if precision == "integer" and not np.array_equal(weights, np.round(weights)):
        factor, total = 255 / np.abs(weights).max(), weights.sum()  # integers, the largest 255
        weights = np.round(weights * factor)
        scale = weights.sum() / total if abs(total) > 1e-9 else factor  # keeps the sum
    rows = "".join(" ".join(f"{v:.17g}" for v in row) + "\n" for row in weights)
    mask.write_text(f"{weights.shape[1]} {weights.shape[0]} {scale:.12g} 0\n{rows}")
    out = (f"{dst}[tile,tile-width={TILE},tile-height={TILE},compression=deflate,predictor=none,"
           "bigtiff]")
    return ["vips", operation, str(src), out, str(mask), "--precision", precision]


def shape_for(gigapixels: float) -> tuple[int, int]:
    """(height, width), 4:3, about ``gigapixels`` x 1e9 pixels."""
    unit = round(math.sqrt(gigapixels * 1e9 / 12))
    return 3 * unit, 4 * unit


def tiles(height: int, width: int) -> Iterator[np.ndarray]:
    """The image's 256x256x3 tiles in row-major order: smooth sines plus noise (seeded per tile)."""
    ramp = np.arange(TILE, dtype=np.float32)
    for ty in range(0, height, TILE):
        for tx in range(0, width, TILE):
            y, x = (ty + ramp)[:, None], (tx + ramp)[None, :]
            noise = np.random.default_rng([ty, tx]).standard_normal((TILE, TILE, 3), np.float32)
            tile = np.empty((TILE, TILE, 3), np.float32)
            for c in range(3):
                smooth = 60 * np.sin(x / (240 + 50 * c) + c) * np.cos(y / (170 + 30 * c))
                tile[..., c] = (128 + smooth + 30 * np.sin((0.6 * x + y) / (37 + 5 * c))
                                + 5 * noise[..., c])
            yield np.clip(tile, 0, 255).astype(np.uint8)


def make_input(folder: Path, gigapixels: float) -> Path:
    """The input TIFF of that size, made unless a file of the right shape is there."""
    height, width = shape_for(gigapixels)
    path = folder / f"rgb-{height}x{width}.tif"
    if path.exists():
        with tifffile.TiffFile(path) as tif:
            if tif.pages[0].shape == (height, width, 3):
                return path  # made before
    folder.mkdir(parents=True, exist_ok=True)
    part, start = path.with_suffix(".part"), time.perf_counter()
    with tifffile.TiffWriter(part, bigtiff=True) as tif:
        tif.write(data=tiles(height, width), shape=(height, width, 3), dtype=np.uint8,
                  tile=(TILE, TILE), compression="zlib", photometric="rgb")
    part.replace(path)
    print(f"made {path} in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def measure(command: list[str]) -> dict:
    """{"rc", "wall" s, "rss" KiB, "err"} of one run of ``command``, in a wrapper process."""
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def max_difference(a: Path, b: Path) -> str:
    """The largest absolute difference between two images."""
    try:
        x, y = tifffile.imread(a), tifffile.imread(b)
        if x.shape != y.shape:
            return f"shapes {x.shape} vs {y.shape}"
        worst = max(np.abs(x[i:i + 256].astype(np.float32) - y[i:i + 256]).max()
                    for i in range(0, len(x), 256))  # a band of rows at a time: little memory
        return f"{worst:g}"
    except Exception as exc:  # an output that is missing or that tifffile cannot read
        return f"unreadable: {exc}"[:60]


def about() -> str:
    """The CPU, cores and RAM; imgconv's commit and vips's version."""
    def output(command: list[str]) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "unknown CPU")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "unknown"
    if output(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]):
        commit += " + uncommitted changes"
    return (f"{cpu}, {os.cpu_count()} cores, {ram:.1f} GiB RAM\nimgconv {commit}; "
            f"{output(['vips', '--version']) or 'no vips'}; tifffile {tifffile.__version__}; "
            f"Python {sys.version.split()[0]}")


def summary(runs: list[dict], pixels: int) -> tuple[list[str], float, str]:
    """[s, MP/s, peak RSS MiB] of the median run, its seconds, and the first failure's error."""
    failed = [r for r in runs if r["rc"] != 0]
    if failed:
        return ["FAILED"] * 3, math.nan, f"exit {failed[0]['rc']}: " + " ".join(
            failed[0]["err"].split())
    wall = statistics.median(r["wall"] for r in runs)
    rss = statistics.median(r["rss"] for r in runs) / 1024
    return [f"{wall:.1f}", f"{pixels / wall / 1e6:.1f}", f"{rss:.0f}"], wall, ""


def bench(src: Path, out: Path, kernel: str, pixels: int, tools: tuple[str, ...],
          args: argparse.Namespace) -> list[str]:
    """One table row: each tool's figures, the time ratio, the outputs' difference, any error."""
    mask, dst = out / "mask.mat", {t: out / f"{t}.tif" for t in ("imgconv", "vips")}
    commands = {"imgconv": imgconv_command(src, dst["imgconv"], kernel),
                "vips": vips_command(src, dst["vips"], kernel, mask, args.vips_precision)}
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    for _ in range(args.repeat):
        for tool in tools:  # interleaved: the runs of the two see the same machine load
            dst[tool].unlink(missing_ok=True)
            runs[tool].append(run := measure(commands[tool]))
            print(f"  {src.name} {kernel} {tool}: " + (
                f"{run['wall']:.1f} s, {run['rss'] / 1024:.0f} MiB" if run["rc"] == 0
                else f"FAILED: {run['err']}"), flush=True)
    figures = {t: summary(runs[t], pixels) for t in tools}
    line = [v for t in tools for v in figures[t][0]]
    if len(tools) == 2:
        ratio = figures["imgconv"][1] / figures["vips"][1]
        check = pixels <= args.check_max * 1e9 and ratio == ratio
        line += ["-" if ratio != ratio else f"{ratio:.2f}",
                 max_difference(dst["imgconv"], dst["vips"]) if check else "-"]
    for path in dst.values():
        path.unlink(missing_ok=True)
    return [*line, "; ".join(f"{t} {figures[t][2]}" for t in tools if figures[t][2])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.1,0.5,1",
                        help="gigapixels, comma-separated (default 0.1,0.5,1; 0.01: a quick check)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/imgconv-bench-huge"),
                        help="where the inputs are made and kept, and outputs written")
    parser.add_argument("--only", choices=("both", "imgconv", "vips"), default="both",
                        help="time one tool only (default both)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each (median)")
    parser.add_argument("--vips-precision", choices=("integer", "float"), default="integer",
                        help="vips conv's precision (float writes a float TIFF)")
    parser.add_argument("--check-max", type=float, default=0.15,
                        help="compare the two outputs up to this many GP (default 0.15)")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    tools = ("imgconv", "vips") if args.only == "both" else (args.only,)

    print(about())
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the start; "
          f"median of {args.repeat} run(s); vips --precision {args.vips_precision}\n", flush=True)
    out = args.data / "out"
    out.mkdir(parents=True, exist_ok=True)
    table: list[list[str]] = []
    for gigapixels in (float(s) for s in args.sizes.split(",")):
        src = make_input(args.data, gigapixels)
        height, width = shape_for(gigapixels)
        with open(src, "rb") as f:  # into the page cache, for both tools alike
            while f.read(1 << 24):
                pass
        size = f"{height * width / 1e9:.2g} GP {height}x{width} ({src.stat().st_size >> 20} MiB)"
        for kernel in KERNELS:
            table.append([size, kernel, *bench(src, out, kernel, height * width, tools, args)])

    header = ["size", "kernel", *(h for t in tools for h in (f"{t} s", "MP/s", "peak RSS MiB")),
              *(["imgconv/vips time", "max abs diff"] if len(tools) == 2 else []), "notes"]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    print()
    for line in [header, *table]:  # the notes last, unpadded: an error's text is long
        print("  ".join(v.rjust(w) if 1 < i < len(line) - 1 else v.ljust(w)
                        for i, (v, w) in enumerate(zip(line, widths, strict=True))).rstrip())
    if args.markdown:
        print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for line in table:
            print("| " + " | ".join(v.replace("|", "\\|") for v in line) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
