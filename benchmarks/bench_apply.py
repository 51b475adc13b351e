"""Time ``imgconv apply`` end to end against Pillow, libvips and ImageMagick on a 12 MP JPEG.

Run ``python benchmarks/bench_apply.py`` (``--help`` for options). It makes a
photo-like 4000x3000 RGB JPEG in a temporary folder (a sample photograph
upscaled with Lanczos, plus fixed-seed grain, saved at quality 90), then runs,
each in a fresh process, interleaved run by run:

- ``imgconv apply IN -k sobel-x --output-map clip --quality Q -o OUT.jpg``
  (as is, with ``--jobs 1``, with ``--threads 1`` and, when numba is
  installed, with ``--jit``, which pays numba's import and the load of the
  compiled code from numba's cache in every run; the untimed warm-up run
  compiles it if the cache is empty), and ``imgconv --version`` (the fixed
  start-up cost every call pays);
- Pillow's ``ImageFilter.Kernel`` in a separate Python process (load, filter,
  save JPEG). Pillow's 3x3 kernel correlates along x but convolves along y (its
  first kernel row weighs the row *below*), so it is given the sobel-x weights
  flipped upside down, which for sobel-x is the same matrix;
- the floor of any tool on numpy and Pillow: a Python script that imports numpy and
  Pillow, decodes the JPEG into an array and encodes it again, with no filter;
- ``vips conv`` when ``vips`` is on PATH (``apt-get install libvips-tools``);
  vips correlates (the mask as written), in float by default, and casting to
  8 bits for JPEG clips to 0..255; also ``--precision integer`` for reference;
- ImageMagick's ``-morphology Convolve`` when a real ImageMagick is installed
  (a true convolution, so it is given the kernel rotated by 180 degrees).

Every JPEG is written at the same quality with 4:2:0 chroma subsampling
(Pillow's default; vips is told so, since it drops subsampling at Q >= 90).
For each it reports the median wall time and the peak resident set size
(``/usr/bin/time -v``, "Maximum resident set size"; without GNU time,
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` from a fresh helper process
per run) and the ratios issue 5 states its goals in: imgconv's wall time at
most 1.2x vips conv's, its peak memory at most 1.2x Pillow's. It also checks
the results agree: mean abs difference of the JPEG outputs, and an exact
comparison of uncompressed TIFF outputs made once, untimed. Nothing is
asserted: the numbers are printed. The tools run with bytecode caching on
(``PYTHONDONTWRITEBYTECODE`` is unset), as after a normal install.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
GNU_TIME = "/usr/bin/time"

# Runs in its own interpreter so that its start-up, imports and memory are measured as a
# user would pay them. argv: input, output, quality, then the 9 weights as Pillow takes them.
PILLOW_SCRIPT = """\
import sys
from PIL import Image, ImageFilter

src, dst, quality, *weights = sys.argv[1:]
kernel = ImageFilter.Kernel((3, 3), [float(w) for w in weights], scale=1, offset=0)
with Image.open(src) as image:
    out = image.filter(kernel)
if dst.lower().endswith((".jpg", ".jpeg")):
    out.save(dst, quality=int(quality))
else:
    out.save(dst)
"""

# The floor of any Python tool built on numpy and Pillow: start Python, import numpy and
# Pillow, decode the JPEG, copy it into an array and back, encode it. No filtering, no CLI.
FLOOR_SCRIPT = """\
import sys
import numpy as np
from PIL import Image

src, dst, quality = sys.argv[1:]
with Image.open(src) as image:
    pixels = np.asarray(image)
Image.fromarray(pixels).save(dst, quality=int(quality))
"""

# Fallback when GNU time is missing: run the command as this helper's only child and report
# its wall time and ru_maxrss (KiB on Linux) from RUSAGE_CHILDREN.
RUSAGE_HELPER = """\
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, code)
"""


@dataclass
class Tool:
    """One contender: a command line with ``{out}`` where its output file goes."""

    name: str
    argv: list[str]
    ext: str = ".jpg"  # output extension; "" for commands that write nothing
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)

    def command(self, out: Path | None) -> list[str]:
        return [a.replace("{out}", str(out)) if out is not None else a for a in self.argv]


def measure(cmd: list[str], use_gnu_time: bool, scratch: Path) -> tuple[float, float, int]:
    """Run ``cmd`` once: (wall seconds, CPU seconds, peak RSS KiB). Raises if it fails."""
    if use_gnu_time:
        report = scratch / "time.txt"
        start = time.perf_counter()
        proc = subprocess.run([GNU_TIME, "-v", "-o", str(report), *cmd],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.decode(errors='replace')}")
        text = report.read_text()
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if match is None:
            raise RuntimeError(f"no 'Maximum resident set size' in {GNU_TIME} -v output")
        cpu = sum(float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)",
                                                text))
        return wall, cpu, int(match.group(1))
    proc = subprocess.run([sys.executable, "-c", RUSAGE_HELPER, *cmd],
                          capture_output=True, text=True)
    wall_s, cpu_s, rss_s, code_s = proc.stdout.split()
    if int(code_s) != 0 or proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {code_s})")
    return float(wall_s), float(cpu_s), int(rss_s)


def make_input(path: Path, source: Path, size: tuple[int, int], quality: int) -> None:
    """A photo-like RGB JPEG: ``source`` upscaled with Lanczos plus mild sensor-like grain."""
    with Image.open(source) as im:
        big = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    pixels = np.asarray(big, dtype=np.float32)
    pixels += np.random.default_rng(0).normal(0.0, 3.0, pixels.shape).astype(np.float32)
    Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(path, quality=quality)


def imgconv_command() -> list[str]:
    """The ``imgconv`` console script next to this interpreter, else ``python -m imgconv``."""
    script = Path(sys.executable).with_name("imgconv")
    return [str(script)] if script.exists() else [sys.executable, "-m", "imgconv"]


def jit_installed() -> bool:
    """Whether numba is importable: then ``imgconv apply --jit`` is timed too."""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def imagemagick() -> list[str] | None:
    """``magick`` or ``convert`` if it is a real ImageMagick (not a stand-in script)."""
    for name in ("magick", "convert"):
        exe = shutil.which(name)
        if exe is None:
            continue
        try:
            out = subprocess.run([exe, "-version"], capture_output=True, text=True,
                                 timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.startswith("Version: ImageMagick"):
            return [exe]
    return None


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def mean_abs_diff(a: Path, b: Path, border: int = 0) -> tuple[float, int]:
    """Mean and max |a - b|, without a ``border``-pixel frame."""
    with Image.open(a) as ia, Image.open(b) as ib:
        x = np.asarray(ia.convert("RGB"), dtype=np.int16)
        y = np.asarray(ib.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        raise ValueError(f"{a.name} is {x.shape}, {b.name} is {y.shape}")
    h, w = x.shape[:2]
    d = np.abs(x - y)[border:h - border, border:w - border]
    return float(d.mean()), int(d.max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per tool (median; "
                        "default 5), after one untimed warm-up run each")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (input, outputs) and print its path")
    parser.add_argument("--source", type=Path, default=REPO / "sample_images" / "astronaut.png",
                        help="photograph to upscale (default sample_images/astronaut.png)")
    parser.add_argument("--size", default="4000x3000", help="input WxH (default 4000x3000)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the input "
                        "and of every output (default 90)")
    parser.add_argument("--variants", action="store_true",
                        help="also time imgconv variants that show where time and memory go: "
                        "-k identity, and --format npy (float32 out, no mapping or JPEG)")
    parser.add_argument("--rusage", action="store_true",
                        help=f"measure peak RSS with getrusage even if {GNU_TIME} exists")
    args = parser.parse_args(argv)
    # An installed package has its bytecode compiled at install time; a checkout gets it on
    # the first (warm-up) run, unless the environment forbids writing it, as some CI and
    # sandbox images do: then every timed run would recompile imgconv (~0.1 s).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    width, height = (int(v) for v in args.size.lower().split("x"))
    use_gnu_time = os.access(GNU_TIME, os.X_OK) and not args.rusage
    q = str(args.quality)

    tmp = Path(tempfile.mkdtemp(prefix="bench_apply-"))
    try:
        src = tmp / "input.jpg"
        make_input(src, args.source, (width, height), args.quality)
        pillow_py = tmp / "pillow_kernel.py"
        pillow_py.write_text(PILLOW_SCRIPT)
        floor_py = tmp / "floor.py"
        floor_py.write_text(FLOOR_SCRIPT)
        # Pillow weighs row y+1 with its first kernel row (and x-1 with each row's first
        # weight): pass the correlation weights flipped upside down
        pillow_weights = [str(w) for w in np.flipud(SOBEL_X).ravel()]
        mask = tmp / "sobel_x.mat"  # vips text matrix: width height scale offset, then rows
        mask.write_text("3 3 1 0\n" + "\n".join(" ".join(str(v) for v in row)
                                                 for row in SOBEL_X) + "\n")

        ic = imgconv_command()
        apply = [*ic, "apply", str(src), "-k", "sobel-x", "--output-map", "clip",
                 "--quality", q, "--quiet", "--overwrite", "-o", "{out}"]
        tools = [
            Tool("imgconv apply", apply),
            Tool("imgconv apply --jobs 1", [*apply, "--jobs", "1"]),
            Tool("imgconv apply --threads 1", [*apply, "--threads", "1"]),
            Tool("imgconv --version", [*ic, "--version"], ext=""),
            *([Tool("imgconv apply --jit", [*apply, "--jit"])] if jit_installed() else []),
            Tool("Pillow ImageFilter.Kernel",
                 [sys.executable, str(pillow_py), str(src), "{out}", q, *pillow_weights]),
            Tool("numpy+Pillow, no filter (floor)",
                 [sys.executable, str(floor_py), str(src), "{out}", q]),
        ]
        if args.variants:
            tools += [
                Tool("imgconv apply -k identity",
                     [a if a != "sobel-x" else "identity" for a in apply]),
                Tool("imgconv apply --format npy", [*apply, "--format", "npy"], ext=".npy"),
            ]
        vips = shutil.which("vips")
        if vips:
            vips_out = f"{{out}}[Q={q},subsample_mode=on]"
            tools += [
                Tool("vips conv", [vips, "conv", str(src), vips_out, str(mask)]),
                Tool("vips conv --precision integer",
                     [vips, "conv", str(src), vips_out, str(mask), "--precision", "integer"]),
            ]
        magick = imagemagick()
        if magick:
            rotated = ",".join(str(v) for v in np.rot90(SOBEL_X, 2).ravel())
            tools.append(Tool("ImageMagick -morphology Convolve",
                              [*magick, str(src), "-morphology", "Convolve", f"3x3:{rotated}",
                               "-quality", q, "-sampling-factor", "4:2:0", "{out}"]))

        print(f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; {platform.system()} "
              f"{platform.release()}; load average at start {load_average()}")
        print(f"Python {platform.python_version()}, imgconv {version('imgconv')}, "
              f"numpy {version('numpy')}, Pillow {version('Pillow')}, "
              f"vips {tool_version([vips, '--version']) if vips else 'not installed'}, "
              f"ImageMagick {tool_version([*magick, '-version']) if magick else 'not installed'}")
        print(f"input {width}x{height} RGB JPEG q{args.quality} "
              f"({src.stat().st_size / 1e6:.1f} MB) from {args.source.name}; sobel-x, "
              f"clip, JPEG q{args.quality} 4:2:0 out; median of {args.runs} runs, interleaved; "
              f"peak RSS by {'/usr/bin/time -v' if use_gnu_time else 'getrusage(RUSAGE_CHILDREN)'}")
        if not vips:
            print("vips not on PATH: skipping vips conv (apt-get install libvips-tools)")
        if not magick:
            print("ImageMagick not installed: skipping -morphology Convolve")
        print()

        def out_path(tool: Tool, index: int, ext: str | None = None) -> Path | None:
            e = tool.ext if ext is None else ext
            return tmp / f"out{index}{e}" if e else None

        # one warm-up run each (page cache, .pyc), then interleaved timed runs; the order
        # rotates each round so that no tool always follows the same neighbour
        for i, tool in enumerate(tools):
            measure(tool.command(out_path(tool, i)), use_gnu_time, tmp)
        order = list(range(len(tools)))
        for r in range(args.runs):
            for i in order[r % len(order):] + order[:r % len(order)]:
                tool = tools[i]
                wall, cpu, rss = measure(tool.command(out_path(tool, i)), use_gnu_time, tmp)
                tool.walls.append(wall)
                tool.cpus.append(cpu)
                tool.rss_kib.append(rss)

        by_name = {t.name: t for t in tools}
        ref_time = by_name.get("vips conv")
        ref_mem = by_name["Pillow ImageFilter.Kernel"]
        vips_s = statistics.median(ref_time.walls) if ref_time else float("nan")
        pillow_mib = statistics.median(ref_mem.rss_kib) / 1024
        header = (f"{'tool':<34} {'wall s':>7} {'(min-max)':>11} {'CPU s':>6} {'peak RSS MiB':>12} "
                  f"{'time / vips':>11} {'RSS / Pillow':>12}")
        print(header)
        print("-" * len(header))
        for tool in tools:
            wall = statistics.median(tool.walls)
            mib = statistics.median(tool.rss_kib) / 1024
            print(f"{tool.name:<34} {wall:>7.2f} {min(tool.walls):>5.2f}-{max(tool.walls):<5.2f} "
                  f"{statistics.median(tool.cpus):>6.2f} {mib:>12.0f} "
                  f"{f'{wall / vips_s:.2f}' if ref_time else 'n/a':>11} "
                  f"{mib / pillow_mib:>12.2f}")

        ours = by_name["imgconv apply"]
        t_ratio = statistics.median(ours.walls) / vips_s
        m_ratio = statistics.median(ours.rss_kib) / 1024 / pillow_mib
        print("\nGoals of issue 5 for imgconv apply:")
        if ref_time:
            # runs are interleaved, so round r of each tool ran under similar load
            paired = statistics.median(o / v for o, v in zip(ours.walls, ref_time.walls,
                                                             strict=True))
            print(f"  wall time <= 1.2x vips conv: {t_ratio:.2f}x (median of per-round ratios "
                  f"{paired:.2f}x) -> {'met' if t_ratio <= 1.2 else 'NOT met'}")
        else:
            print("  wall time <= 1.2x vips conv: not measured (no vips)")
        print(f"  peak memory <= 1.2x Pillow:  {m_ratio:.2f}x -> "
              f"{'met' if m_ratio <= 1.2 else 'NOT met'}")

        # agreement: the timed JPEG outputs, then once more losslessly (TIFF, untimed)
        print("\nAgreement with imgconv apply (8-bit values; for Pillow without the 1-pixel "
              "frame it leaves unfiltered):")
        index = {t.name: i for i, t in enumerate(tools)}
        ours_jpg = out_path(ours, index["imgconv apply"])
        assert ours_jpg is not None
        # uncompressed outputs, exact: 8-bit TIFF (imgconv, Pillow); vips writes float TIFF
        # from a float conv, so it writes PNG (cast to 8 bits, clipped) without compression
        lossless = {
            "imgconv apply": ([*ic, "apply", str(src), "-k", "sobel-x", "--output-map", "clip",
                               "--quiet", "--overwrite", "-o", "{out}"], ".tif"),
            "Pillow ImageFilter.Kernel": (ref_mem.argv, ".tif"),
        }
        if vips:
            lossless["vips conv"] = ([vips, "conv", str(src), "{out}[compression=0]",
                                      str(mask)], ".png")
        for name, (cmd, ext) in lossless.items():
            out = tmp / f"exact-{index[name]}{ext}"
            subprocess.run([c.replace("{out}", str(out)) for c in cmd], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        exact_ours = tmp / f"exact-{index['imgconv apply']}.tif"
        for name, (_, ext) in lossless.items():
            if name == "imgconv apply":
                continue
            other = out_path(by_name[name], index[name])
            assert other is not None
            frame = 1 if name.startswith("Pillow") else 0
            jmean, jmax = mean_abs_diff(ours_jpg, other, frame)
            tmean, tmax = mean_abs_diff(exact_ours, tmp / f"exact-{index[name]}{ext}", frame)
            print(f"  {name:<26} JPEG outputs: mean |diff| {jmean:.3f}, max {jmax}; "
                  f"uncompressed outputs: mean |diff| {tmean:.4f}, max {tmax}")
        print(f"\nload average at end {load_average()}")
        if args.keep:
            print(f"kept {tmp}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
