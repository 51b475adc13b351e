"""A batch on a local Dask cluster against the local process pool: ``--scheduler local:2`` vs
``--jobs 2`` on 200 JPEGs of 1 to 12 MP (issue 17).

Run ``python benchmarks/bench_cluster.py`` (``--help`` for options; needs the
``scale`` extra). It makes the JPEGs once in a folder (a sample photograph
resized to 1, 2, ... 12 megapixels in turn, 4:3, quality 90, with fixed-seed
grain so that no two are alike), then runs, each in a fresh process,
alternating run by run:

- ``imgconv apply DIR -k sobel --out-dir OUT --jobs 2 --manifest M -q``;
- the same with ``--scheduler local:2`` instead of ``--jobs 2`` (a
  ``LocalCluster`` of two worker processes, started and shut down by the run).

It reports for each the median wall time, files per second, and the time not
spent filtering per file: ``(wall x 2 workers - sum of the manifest's per-file
seconds) / files``, which holds start-up, scheduling and result collection
(and a pool's or cluster's start-up spread over the files). It checks that
both write the same bytes. Then, apart from any image work, the scheduler's own
cost per task: 2,000 tasks that do nothing (``str(i)``) through
``DaskExecutor.map_unordered`` on a running ``local:2`` cluster, wall time x 2
workers / tasks. Nothing is asserted: the numbers are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
IMGCONV = str(Path(sys.executable).parent / "imgconv")
WORKERS = 2


def make_jpegs(folder: Path, count: int, source: Path) -> None:
    """``count`` JPEGs of 1..12 MP (4:3), made once: a folder that has them is kept."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return
    with Image.open(source) as im:
        photo = im.convert("RGB")
    rng = np.random.default_rng(0)
    for i in range(count):
        megapixels = 1 + i % 12
        height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
        width = height * 4 // 3
        pixels = np.asarray(photo.resize((width, height), Image.Resampling.BILINEAR), np.int16)
        grain = rng.integers(-6, 7, (height, 1, 1), dtype=np.int16)
        Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8)).save(
            folder / f"{i:03d}.jpg", quality=90)


def run_once(inputs: Path, work: Path, how: list[str]) -> tuple[float, float, dict[str, bytes]]:
    """(wall seconds, sum of per-file seconds, outputs) of one ``imgconv apply`` run."""
    out, manifest = work / "out", work / "run.json"
    shutil.rmtree(out, ignore_errors=True)
    manifest.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([IMGCONV, "apply", str(inputs), "-k", "sobel", "--out-dir", str(out),
                    "--manifest", str(manifest), "-q", *how], check=True)
    wall = time.perf_counter() - start
    entries = json.loads(manifest.read_text())["inputs"]
    assert all(e["status"] == "written" for e in entries), "a file was not written"
    busy = sum(e["seconds"] for e in entries)
    return wall, busy, {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def scheduler_overhead(tasks: int) -> tuple[float, float]:
    """(seconds to start a local:2 cluster, ms of scheduling per task) for no-op tasks."""
    from imgconv.batch.dask import connect

    start = time.perf_counter()
    with connect(f"local:{WORKERS}") as executor:
        started = time.perf_counter() - start
        list(executor.map_unordered(str, list(range(50)), lambda i, why: why))  # warm up
        start = time.perf_counter()
        results = list(executor.map_unordered(str, list(range(tasks)), lambda i, why: why))
        wall = time.perf_counter() - start
    assert sorted(results) == sorted(str(i) for i in range(tasks))
    return started, wall * WORKERS / tasks * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="JPEGs (default 200)")
    parser.add_argument("--runs", type=int, default=1, help="timed runs of each (median)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="where the JPEGs are made and kept (default: a temporary folder)")
    parser.add_argument("--source", type=Path, default=REPO / "sample_images" / "astronaut.png")
    parser.add_argument("--noop-tasks", type=int, default=2000,
                        help="no-op tasks for the scheduler's cost per task (default 2000)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    inputs = args.folder or work / "in"
    try:
        start = time.perf_counter()
        make_jpegs(inputs, args.count, args.source)
        total_mp = sum(Image.open(p).size[0] * Image.open(p).size[1]
                       for p in inputs.glob("*.jpg")) / 1e6
        print(f"{args.count} JPEGs, {total_mp:.0f} MP in all (ready in "
              f"{time.perf_counter() - start:.1f} s); {platform.processor() or platform.machine()}"
              f", {os.cpu_count()} CPUs, Python {platform.python_version()}")
        modes = {"--jobs 2": ["--jobs", str(WORKERS)],
                 "--scheduler local:2": ["--scheduler", f"local:{WORKERS}"]}
        walls: dict[str, list[float]] = {m: [] for m in modes}
        busies: dict[str, list[float]] = {m: [] for m in modes}
        outputs: dict[str, dict[str, bytes]] = {}
        for _ in range(args.runs):
            for mode, how in modes.items():
                wall, busy, outputs[mode] = run_once(inputs, work, how)
                walls[mode].append(wall)
                busies[mode].append(busy)
        same = outputs["--jobs 2"] == outputs["--scheduler local:2"]
        print(f"{'':22} {'wall s':>8} {'files/s':>8} {'MP/s':>6} {'not filtering, ms/file':>23}")
        for mode in modes:
            wall, busy = statistics.median(walls[mode]), statistics.median(busies[mode])
            idle = (wall * WORKERS - busy) / args.count * 1000
            print(f"{mode:22} {wall:8.1f} {args.count / wall:8.2f} {total_mp / wall:6.1f} "
                  f"{idle:23.0f}")
        ratio = statistics.median(walls["--scheduler local:2"]) / statistics.median(
            walls["--jobs 2"])
        print(f"--scheduler local:2 / --jobs 2 wall time: {ratio:.2f}x (goal: <= 1.2x); "
              f"same bytes: {same}")
        started, per_task = scheduler_overhead(args.noop_tasks)
        print(f"local:2 cluster start-up {started:.1f} s; scheduler overhead per task "
              f"{per_task:.1f} ms ({args.noop_tasks} no-op tasks, x {WORKERS} workers)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
