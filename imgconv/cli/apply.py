"""``imgconv apply``: options in, the batch run, progress and summary out."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgconv.cli.options import (
    LAYER,
    PANEL_OUT,
    PANEL_RUN,
    Activation,
    Bias,
    Cval,
    Debug,
    Dilation,
    Gray,
    Inputs,
    Kernels,
    MaxPixels,
    Mode,
    PaddingOpt,
    PadMode,
    PipelineFile,
    PoolCeil,
    PoolCountPad,
    PoolDilation,
    PoolOp,
    PoolPadding,
    PoolSize,
    PoolStride,
    Stride,
    Tol,
    build_pipeline,
    check_core_settings,
    check_geometry,
    check_tol,
    layer_options,
    read_stdin,
)
from imgconv.cli.output import (
    flag_words,
    print_error,
    print_warning,
    printable,
    report_errors,
    silence_stdout,
    stderr,
    stdout,
)
from imgconv.errors import UsageError

PANEL_LARGE = "Large images"

if TYPE_CHECKING:
    from imgconv.batch import DaskExecutor, Executor, Options, Result, Task
    from imgconv.pipeline.run import Pipeline
    from imgconv.prefetch import Prefetch


def apply_command(
    inputs: Inputs,
    kernel: Kernels = None,
    pipeline_file: PipelineFile = None,
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            metavar="FILE",
            help="Output file for one input, or - for standard output.",
            rich_help_panel=PANEL_OUT,
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[
        str | None,
        typer.Option(
            "--out-dir",
            metavar="DIR",
            help="Output folder (created if missing); keeps the inputs' sub-folders.",
            rich_help_panel=PANEL_OUT,
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="TEMPLATE",
            help="Output name under --out-dir: fields {stem} {ext} {kernel} {name} {map} "
            "(one file per map of a stack bank or layer). "
            "\\[default: {stem}{ext}]",
            rich_help_panel=PANEL_OUT,
            show_default=False,
        ),
    ] = None,
    montage: Annotated[
        str | None,
        typer.Option(
            "--montage",
            metavar="FILE.png",
            help="Write a picture of the result's maps on a grid, each normalised on its own "
            "and labelled, the input beside them (one input; -o is then optional).",
            rich_help_panel=PANEL_OUT,
            show_default=False,
        ),
    ] = None,
    mode: Mode = LAYER.mode,
    padding: PaddingOpt = str(LAYER.padding),
    pad_mode: PadMode = LAYER.pad_mode,
    cval: Cval = LAYER.cval,
    stride: Stride = str(LAYER.stride),
    dilation: Dilation = str(LAYER.dilation),
    activation: Activation = LAYER.activation,
    pool: PoolOp = LAYER.pool,
    pool_size: PoolSize = None,
    pool_stride: PoolStride = None,
    pool_padding: PoolPadding = str(LAYER.pool_padding),
    pool_dilation: PoolDilation = str(LAYER.pool_dilation),
    pool_ceil: PoolCeil = LAYER.pool_ceil,
    pool_count_pad: PoolCountPad = LAYER.pool_count_pad,
    bias: Bias = None,
    gray: Gray = False,
    alpha: Annotated[
        str,
        typer.Option(
            "--alpha",
            metavar="MODE",
            help="auto, premultiply, copy or drop.",
            rich_help_panel=PANEL_OUT,
        ),
    ] = "auto",
    output_map: Annotated[
        str,
        typer.Option(
            "--output-map",
            metavar="MAP",
            help="auto, clip, abs, offset or normalize.",
            rich_help_panel=PANEL_OUT,
        ),
    ] = "auto",
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="png, jpg, tiff, webp, bmp, npy or zarr (default: from the extension).",
            rich_help_panel=PANEL_OUT,
            show_default=False,
        ),
    ] = None,
    quality: Annotated[
        int | None,
        typer.Option(
            "--quality",
            metavar="Q",
            min=1,
            max=100,
            help="JPEG/WebP quality 1-100.",
            rich_help_panel=PANEL_OUT,
            show_default=False,
        ),
    ] = None,
    depth: Annotated[
        str | None,
        typer.Option(
            "--depth",
            metavar="DEPTH",
            help="8, 16 (png/tiff) or float (tiff: one sample per map). \\[default: the input's]",
            rich_help_panel=PANEL_OUT,
            show_default=False,
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            "-j",
            metavar="N",
            min=1,
            help="Files in parallel. \\[default: number of CPUs]",
            rich_help_panel=PANEL_RUN,
            show_default=False,
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            metavar="ADDRESS",
            help="Run the files on a Dask cluster: its scheduler's address (tcp://HOST:8786), "
            "or local[:N] for N worker processes here (pip install 'imgconv\\[scale]'). "
            "\\[default: IMGCONV_SCHEDULER, unless --jobs is given]",
            rich_help_panel=PANEL_RUN,
            show_default=False,
        ),
    ] = None,
    scheduler_file: Annotated[
        str | None,
        typer.Option(
            "--scheduler-file",
            metavar="PATH",
            help="The Dask cluster whose scheduler wrote this file (dask scheduler "
            "--scheduler-file PATH).",
            rich_help_panel=PANEL_RUN,
            show_default=False,
        ),
    ] = None,
    scheduler_timeout: Annotated[
        float,
        typer.Option(
            "--scheduler-timeout",
            metavar="SECONDS",
            help="How long to wait for the Dask scheduler to answer at the start.",
            rich_help_panel=PANEL_RUN,
        ),
    ] = 10.0,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            metavar="N",
            min=1,
            help="Core threads per file. \\[default: IMGCONV_THREADS, else all "
            "cores with --jobs 1 and 1 per job otherwise]",
            rich_help_panel=PANEL_RUN,
            show_default=False,
        ),
    ] = None,
    jit: Annotated[
        bool | None,
        typer.Option(
            "--jit/--no-jit",
            help="Sum the filter's taps in code compiled by numba (pip install "
            "'imgconv\\[jit]'): faster filtering of float images (not much of 8-bit "
            "ones), but numba's start-up (about 0.6 s) in every process. "
            "\\[default: IMGCONV_JIT, else off]",
            rich_help_panel=PANEL_RUN,
            show_default=False,
        ),
    ] = None,
    recursive: Annotated[
        bool,
        typer.Option(
            "--recursive",
            "-r",
            metavar="",
            help="Descend into sub-folders.",
            rich_help_panel=PANEL_RUN,
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            metavar="",
            help="Replace existing outputs (never an input).",
            rich_help_panel=PANEL_RUN,
        ),
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            metavar="",
            help="Skip inputs whose output exists (resume a batch).",
            rich_help_panel=PANEL_RUN,
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            metavar="",
            help="Print the plan; write nothing.",
            rich_help_panel=PANEL_RUN,
        ),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            metavar="",
            help="Check each result against scipy.ndimage.",
            rich_help_panel=PANEL_RUN,
        ),
    ] = False,
    tol: Tol = None,
    manifest: Annotated[
        str | None,
        typer.Option(
            "--manifest",
            metavar="FILE",
            help="Write a JSON record of the run.",
            rich_help_panel=PANEL_RUN,
            show_default=False,
        ),
    ] = None,
    max_pixels: MaxPixels = 100_000_000,
    tiles: Annotated[
        bool | None,
        typer.Option(
            "--tiles/--no-tiles",
            help="Filter TIFF, .npy and .zarr inputs chunk by chunk in bounded memory "
                 "(default: when the float32 copy would pass --memory-limit, or the image "
                 "--max-pixels).",
            rich_help_panel=PANEL_LARGE,
            show_default=False,
        ),
    ] = None,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            "--memory-limit",
            metavar="SIZE",
            help="Working memory an input may take before it is tiled: 512MB, 2GiB, 1.5G "
                 "(default: a quarter of RAM, at most 4 GiB).",
            rich_help_panel=PANEL_LARGE,
            show_default=False,
        ),
    ] = None,
    chunk: Annotated[
        int | None,
        typer.Option(
            "--chunk",
            metavar="N",
            min=1,
            max=65536,
            help="Chunk side in pixels for tiled inputs (default: from --memory-limit and "
                 "the cores).",
            rich_help_panel=PANEL_LARGE,
            show_default=False,
        ),
    ] = None,
    compression: Annotated[
        str | None,
        typer.Option(
            "--compression",
            metavar="NAME",
            help="none, deflate, zstd, lzw or jpeg (8-bit): TIFF outputs' compression. "
                 "\\[default: deflate for TIFFs written in tiles, none for others]",
            rich_help_panel=PANEL_LARGE,
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", metavar="", help="Print errors only.", rich_help_panel=PANEL_RUN
        ),
    ] = False,
    debug: Debug = False,
) -> None:
    """Filter images: conv -> activation -> pool -> output mapping, one file or ten thousand."""
    from imgconv.prefetch import Prefetch

    # a Dask cluster's workers run the files (the scale extra), even one
    on_cluster = (scheduler is not None or scheduler_file is not None
                  or (jobs is None and bool(os.environ.get("IMGCONV_SCHEDULER"))))
    # one file: decode it while numpy and the kernels are imported
    single = len(inputs) == 1 and inputs[0] != "-" and not dry_run and os.path.isfile(inputs[0])
    single = single and not on_cluster and not _may_stream(inputs[0], tiles)
    single = single and "zarr" not in (fmt or "", Path(output or "").suffix.lstrip(".").lower())
    with report_errors(debug), _signals_interrupt():
        # started inside report_errors: the decoding thread's warnings block nests in its own
        prefetch = Prefetch(inputs[0], max_pixels, gray) if single else None
        from imgconv import batch
        from imgconv.imageio import DEPTHS
        from imgconv.pipeline.alpha import check_alpha_mode

        try:
            pipeline = build_pipeline(
                kernel,
                pipeline_file,
                output_map,
                layer_options(locals()),
            )
            check_geometry(pipeline, max_pixels)
            check_tol(tol)
            if output == batch.STDIO and not dry_run and stdout.file_is_terminal():
                raise UsageError("-o -: standard output is a terminal; redirect it to a file "
                                 "or a pipe")
            if overwrite and skip_existing:
                raise UsageError("--overwrite and --skip-existing contradict each other")
            if jobs is not None and (scheduler is not None or scheduler_file is not None):
                raise UsageError("--jobs is for this machine's processes, --scheduler and "
                                 "--scheduler-file for a Dask cluster's: give one")
            check_alpha_mode(alpha, pipeline)
            if depth is not None and depth not in DEPTHS:
                raise UsageError(f"--depth must be one of {', '.join(DEPTHS)}, got {depth!r}")
            check_core_settings(threads, jit)
            limit = _memory_limit(memory_limit)
            from imgconv.imageio import TIFF_COMPRESSIONS

            if compression is not None and compression not in TIFF_COMPRESSIONS:
                raise UsageError(f"--compression must be one of {', '.join(TIFF_COMPRESSIONS)}, "
                                 f"got {compression!r}")
            if inputs.count(batch.STDIO) > 1:
                raise UsageError("standard input (-) can be read only once")
            unreadable: list[str] = []
            sources = batch.expand_inputs(inputs, recursive=recursive, exclude=out_dir,
                                          warnings=unreadable)
            if montage is not None:
                _check_montage(montage, sources, overwrite)
                if output is None and out_dir is None:
                    if not dry_run:
                        _write_montage(montage, sources[0].path, pipeline, gray, max_pixels,
                                       overwrite, quiet)
                    return
            tasks = batch.plan(
                sources, pipeline, output=output, out_dir=out_dir, name=name, fmt=fmt
            )
            batch.check_depth(tasks, depth)
            batch.check_maps(tasks, pipeline, depth)
            if manifest is not None and not dry_run:
                batch.check_manifest_path(manifest, tasks, overwrite=overwrite)
            if not quiet:
                for line in _ignored_options(tasks, cval=cval, pad_mode=pad_mode, tol=tol,
                                             verify=verify, quality=quality):
                    stderr.line(f"note: {line}")
        except KeyboardInterrupt as exc:
            raise typer.Exit(_interrupted_code(exc)) from None
        if not quiet:
            for line in unreadable:
                print_warning(line)
        stdin = read_stdin(max_pixels) if any(s.path == batch.STDIO for s in sources) else None
        subfolders = 0 if recursive else batch.skipped_subfolders(inputs)
        if subfolders and not quiet:
            stderr.line(
                f"note: {subfolders} sub-folder(s) not read; add --recursive to include them"
            )
        options = batch.Options(
            pipeline=pipeline,
            gray=gray,
            alpha=alpha,
            quality=quality,
            depth=depth,
            overwrite=overwrite,
            skip_existing=skip_existing,
            verify=verify,
            tol=tol,
            max_pixels=max_pixels,
            hash_inputs=manifest is not None,
            debug=debug,
            threads=threads,
            jit=jit,
            protected=batch.input_ids(sources),
            tiles=tiles,
            memory_limit=limit,
            chunk=chunk,
            compression=compression,
        )
        cpus = batch.available_cpus()
        if montage is not None and not dry_run:
            _write_montage(montage, sources[0].path, pipeline, gray, max_pixels, overwrite,
                           quiet)
        if jobs is not None and jobs > cpus and not quiet:
            stderr.line(f"note: --jobs {jobs} capped at {cpus} (the number of CPUs)")
        cluster = _cluster(scheduler, scheduler_file, scheduler_timeout, debug) \
            if on_cluster else None
        if dry_run:
            _print_plan(tasks, pipeline, stdin, options)
            if cluster is not None:
                _print_cluster(scheduler, scheduler_file, cluster)
            return
        stack = ExitStack()  # the cluster's client (and a local cluster) while the run lasts
        try:
            with stack:
                if cluster is None:
                    executor: Executor = batch.make_executor(jobs or cpus, len(tasks))
                else:
                    executor = on = stack.enter_context(cluster)
                    if not quiet:
                        stderr.line(f"note: on the Dask {on.describe()[0]}")
                results = _run_with_progress(tasks, options, executor, stdin, quiet,
                                             prefetch)
        except KeyboardInterrupt as exc:
            if cluster is not None:  # a local cluster's workers end with it, maybe mid-write
                batch.remove_temporary_files(tasks)
            stderr.line("interrupted: finished outputs are complete; none is partial")
            raise typer.Exit(_interrupted_code(exc)) from None
        except BrokenPipeError:  # -o - and the reader left (| head): nothing to say there
            silence_stdout()
            raise typer.Exit(141) from None  # as a shell shows a process ended by SIGPIPE
        failed = [r for r in results if r.status == batch.Status.FAILED]
        for r in failed:
            print_error(_with_file(r), multiline=debug)
        if not quiet:
            written = sum(r.status == batch.Status.WRITTEN for r in results)
            skipped = sum(r.status == batch.Status.SKIPPED for r in results)
            summary = f"written {written}, skipped {skipped}, failed {len(failed)}"
            errors = [r.max_error for r in results if r.max_error is not None]
            if errors:
                summary += f"; verified: largest |imgconv - scipy| = {max(errors):.3g}"
            stderr.line(summary)
        if manifest is not None:  # after the files' errors: its own failure hides none of them
            from imgconv import __version__

            batch.write_manifest(
                manifest, options, results, overwrite=overwrite, version=__version__
            )
        if failed:
            raise typer.Exit(1)


def _cluster(scheduler: str | None, scheduler_file: str | None, timeout: float,
             debug: bool) -> AbstractContextManager[DaskExecutor]:
    """The Dask cluster asked for, to connect to (checked now: a bad spec ends the run here)."""
    from imgconv.batch import dask

    if scheduler is not None:
        dask.parse_scheduler(scheduler)
    elif scheduler_file is not None:
        dask.read_scheduler_file(scheduler_file)
    return dask.connect(scheduler, scheduler_file=scheduler_file, timeout=timeout,
                        quiet_logs=not debug)


def _print_cluster(scheduler: str | None, scheduler_file: str | None,
                   cluster: AbstractContextManager[DaskExecutor]) -> None:
    """--dry-run's lines on the cluster: the scheduler's address and its workers."""
    from imgconv.batch import dask

    _, local = dask.parse_scheduler(scheduler or os.environ.get(dask.SCHEDULER_ENV, "")) \
        if scheduler_file is None else ("", None)
    if local is not None:
        stdout.line(f"scheduler: a local cluster of {local} worker process(es) on 127.0.0.1, "
                    "started for the run")
        return
    with cluster as executor:
        for line in executor.describe():
            stdout.line(line)


def _may_stream(path: str, tiles: bool | None) -> bool:
    """Whether ``path`` may take the tiled path (it is not then decoded ahead)."""
    from imgconv.opening import stream_format  # (no numpy yet: the prefetch starts first)

    return tiles is not False and stream_format(path) is not None


def _memory_limit(text: str | None) -> int:
    from imgconv.batch.tasks import default_memory_limit
    from imgconv.batch.tiled import parse_size

    return default_memory_limit() if text is None else parse_size(text)


def _check_montage(path: str, sources: list[Any], overwrite: bool) -> None:
    if len(sources) != 1 or sources[0].path == "-":
        raise UsageError(f"--montage takes one input file, got {len(sources)}")
    if Path(path).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UsageError(f"--montage {path}: give a .png (or .jpg) file")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"--montage {path}: already exists (use --overwrite to replace it)")


def _write_montage(path: str, source: str, pipeline: Pipeline, gray: bool, max_pixels: int,
                   overwrite: bool, quiet: bool) -> None:
    from imgconv.imageio import load
    from imgconv.montage import write_montage

    picture = load(source, gray=gray, max_pixels=max_pixels)
    shape = write_montage(path, picture, pipeline, overwrite=overwrite)
    if not quiet:
        stderr.line(f"{source} {_dims(list(picture.shape))} -> {path} (montage of "
                    f"{_dims(list(shape))})")


def _ignored_options(tasks: list[Task], *, cval: float, pad_mode: str, tol: float | None,
                     verify: bool, quality: int | None) -> list[str]:
    """A line for each option given that this run will not use."""
    lines = []
    if cval != 0.0 and pad_mode not in ("constant", "grid-constant"):
        lines.append(f"--cval is used only with --pad-mode constant, not {pad_mode}")
    if tol is not None and not verify:
        lines.append("--tol is used only with --verify")
    lossy = ("jpg", "webp")
    if quality is not None and any(t.fmt not in lossy for t in tasks):
        formats = sorted({t.fmt for t in tasks if t.fmt not in lossy})
        every = "" if any(t.fmt in lossy for t in tasks) else ", and no output is either"
        lines.append(f"--quality is used only for jpg and webp outputs, not "
                     f"{', '.join(formats)}{every}")
    return lines


class _Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP in the main process: unwinds as Ctrl-C does (temporary files removed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While a run lasts, SIGTERM and SIGHUP raise :class:`_Signalled` (exit 128 + signal)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Signalled(signum)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signum = getattr(signal, name)
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    except _Signalled as exc:
        # one outside the run's own handlers (while numpy and the pipeline are
        # imported, say): its exit code too, not the 130 Typer gives an interrupt
        raise typer.Exit(_interrupted_code(exc)) from None
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _interrupted_code(exc: KeyboardInterrupt) -> int:
    return 128 + (exc.signum if isinstance(exc, _Signalled) else 2)  # 2: SIGINT


def _with_file(result: Result) -> str:
    reason: str = result.reason
    return (
        reason
        if reason.startswith((result.input, result.output))
        else (f"{result.input}: {reason}")
    )


def _dims(shape: list[int] | None) -> str:
    """``[512, 512, 3]`` -> ``(512x512x3)``."""
    return "" if not shape else "(" + "x".join(str(n) for n in shape) + ")"


def _run_with_progress(
    tasks: list[Task], options: Options, executor: Executor, stdin: bytes | None, quiet: bool,
    prefetch: Prefetch | None,
) -> list[Result]:
    from imgconv import batch

    def note(result: Result) -> None:
        for line in result.notes:
            print_warning(line)

    def run(on_result: Callable[[Result], None] | None = None) -> list[Result]:
        return list(batch.run(tasks, options, executor=executor, stdin=stdin, prefetch=prefetch,
                              on_result=on_result))

    if quiet:
        return run()
    if stderr.is_terminal and len(tasks) == 1:
        with _chunk_progress():
            return run(_plain_result)
    if not stderr.is_terminal:

        return run(_plain_result)

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from imgconv.batch.tiled import set_progress

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr.console,
        transient=False,
    ) as progress:
        bar = progress.add_task("filtering", total=len(tasks), rate="")
        chunks = _chunk_bars(progress, "  ", rate="")

        def tick(result: Result) -> None:
            note(result)
            task = progress.tasks[0]
            elapsed = task.elapsed or 0.0
            rate = f"{(task.completed + 1) / elapsed:.1f} files/s" if elapsed > 0 else ""
            progress.update(bar, advance=1, rate=rate)

        set_progress(chunks)
        try:
            return run(tick)
        finally:
            set_progress(None)


def _chunk_bars(progress: Any, indent: str, **fields: Any) -> Callable[[str, int, int], None]:
    """The tiled path's progress hook: a bar of each image's chunks in ``progress``, gone
    when the image is done."""
    bars: dict[str, Any] = {}

    def chunks(name: str, done: int, total: int) -> None:
        if name not in bars:
            bars[name] = progress.add_task(f"{indent}chunks of {_markup(name)}", total=total,
                                           **fields)
        progress.update(bars[name], completed=done)
        if done >= total:
            progress.remove_task(bars.pop(name))

    return chunks


def _markup(name: str) -> str:
    """A file name as rich shows it literally (no [style] read from it)."""
    from rich.markup import escape

    return escape(printable(name))


def _plain_result(result: Result) -> None:
    """One line for a file done: its notes, then what was written (or skipped)."""
    from imgconv import batch

    for line in result.notes:
        print_warning(line)
    if result.status == batch.Status.WRITTEN and result.output != batch.STDIO:
        stderr.line(f"{result.input} {_dims(result.input_shape)} -> {result.output} "
                    f"{_dims(result.output_shape)}")
    elif result.status == batch.Status.SKIPPED:
        stderr.line(f"skipped {result.input}: {result.output} exists")


@contextmanager
def _chunk_progress() -> Iterator[None]:
    """A bar of a tiled image's chunks, while one file runs on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from imgconv.batch.tiled import set_progress

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=stderr.console, transient=True) as progress:
        set_progress(_chunk_bars(progress, ""))
        try:
            yield
        finally:
            set_progress(None)


def _print_plan(tasks: list[Task], pipeline: Pipeline, stdin: bytes | None,
                options: Options) -> None:
    """The --dry-run report: the pipeline's plan for the first input, then each input's output.

    An output that would not be written says why, as the run would
    (:func:`imgconv.batch.output_conflict`).
    """
    from imgconv import batch
    from imgconv.batch.tiled import chunk_sides, stream_header, tiled_problem, wants_tiles
    from imgconv.batch.tiled import plan as tiled_plan
    from imgconv.core.threads import get_threads
    from imgconv.errors import ImgconvError
    from imgconv.imageio import read_header
    from imgconv.opening import stream_format

    def say(text: str) -> None:
        stdout.line(text)

    headers: list[tuple[int, int, float] | str] = []
    plans: dict[int, list[str]] = {}  # the tiled plan of each input that streams
    failures: dict[int, str] = {}  # why a tiled input would fail
    threads = options.threads or get_threads()
    for i, t in enumerate(tasks):
        if wants_tiles(t.source.path, t.fmt, options):
            found = stream_header(t.source.path)
            if found is None:
                headers.append(f"{t.source.path}: no such file" if not os.path.lexists(
                    t.source.path) else f"{t.source.path}: not a readable "
                    f"{stream_format(t.source.path) or 'image'}")
                continue
            shape, dtype = found
            headers.append((shape[0], shape[1], 65535.0 if dtype == "uint16" else 255.0))
            channels = shape[2] if len(shape) == 3 else 1
            sides = chunk_sides(options, channels, threads)
            with contextlib.suppress(ValueError):  # a stage leaves nothing: said below
                plans[i] = tiled_plan(pipeline, shape, sides, threads).lines()
            problem = tiled_problem(t.source.path, shape, t, options, sides, threads)
            if problem is not None:
                failures[i] = problem
            continue
        try:
            source = stdin if t.source.path == "-" and stdin is not None else t.source.path
            headers.append(read_header(source, options.max_pixels))
        except ImgconvError as exc:
            headers.append(str(exc))
    h, w, full = next((x for x in headers if isinstance(x, tuple)), (0, 0, 255.0))
    say("dry run: nothing is written")
    raw = all(t.fmt == "npy" or (t.fmt == "tiff" and options.depth == "float") for t in tasks)
    for line in _plan_lines(pipeline, (h, w), full, raw):
        say(line)
    say("files:")
    for i, (t, header) in enumerate(zip(tasks, headers, strict=True)):
        if isinstance(header, str):
            say(f"  {t.source.path} -> {t.target} (cannot read: {flag_words(header)})")
            continue
        size = header[:2]
        shapes = pipeline.shapes(size)
        empty = next((n for n, s in enumerate(shapes, 1) if min(s) < 1), None)
        if empty is not None:
            say(
                f"  {t.source.path} ({size[0]}x{size[1]}) -> {t.target}: would fail, "
                f"stage {empty} leaves nothing (the image is smaller than the window)"
            )
            continue
        out = shapes[-1]
        exists = ""
        if i in failures:
            exists = f" (would fail: {flag_words(failures[i])})"
        elif t.target != "-":
            target = Path(t.target)
            conflict = batch.output_conflict(target, t.source.path, options)
            if conflict is not None and conflict.skip:
                exists = " (exists: skipped)"
            elif conflict is not None:
                exists = f" (would fail: {flag_words(conflict.reason)})"
            elif target.exists() or target.is_symlink():
                exists = " (exists: replaced)"
        say(f"  {t.source.path} ({size[0]}x{size[1]}) -> {t.target} ({out[0]}x{out[1]}){exists}")
        for line in plans.get(i, ()):
            say(f"    {line}")


def _plan_lines(pipeline: Pipeline, shape: tuple[int, int], full: float = 255.0,
                raw: bool = False) -> list[str]:
    """The --dry-run report of ``pipeline`` for an input of ``shape``, values in ``0 .. full``.

    For each stage: what it applies, its padding, stride and dilation, the
    output size worked out by the formula, and bounds on the values; then
    whether the output mapping will clip (``raw``: every output holds the float
    values, which are not mapped).
    """
    from imgconv.pipeline.stages import ActivationStage, ConvStage

    lo, hi = 0.0, full
    lines = [f"input {shape[0]}x{shape[1]} (rows x columns), values {_span(lo, hi)}"]
    for n, stage in enumerate(pipeline.stages, 1):
        lo, hi = stage.value_range(lo, hi)
        if isinstance(stage, ConvStage):
            k = stage.members()[0]
            kh, kw = k.matrix.shape[:2]
            top, bottom, left, right = stage.pads(k)
            (sy, sx), (dy, dx) = stage.stride, stage.dilation
            ey, ex = dy * (kh - 1) + 1, dx * (kw - 1) + 1
            oh, ow = stage.out_shape(shape)
            kind = (f"bank: {stage.bank.combine} of {len(stage.members())} kernels"
                    if stage.bank else "kernel")
            border = f" ({stage.pad_mode})" if top + bottom + left + right else ""
            lines += [
                f"stage {n}: {stage.mode} {stage.spec} ({kind}, {kh}x{kw}, "
                f"{stage.parameter_count()} parameters)",
                f"    padding {stage.padding} = top {top}, bottom {bottom}, left {left}, "
                f"right {right}{border}; stride {sy}x{sx}; dilation {dy}x{dx}",
                f"    rows    floor(({shape[0]}+{top}+{bottom}-{ey})/{sy})+1 = {oh}",
                f"    columns floor(({shape[1]}+{left}+{right}-{ex})/{sx})+1 = {ow}",
            ]
            shape = (oh, ow)
        elif isinstance(stage, ActivationStage):
            lines.append(f"stage {n}: activation {stage.kind}")
        else:
            lines += _pool_lines(n, stage, shape)
            shape = stage.out_shape(shape)
        lines.append(f"    values {_span(lo, hi)}")
    if raw:
        lines.append(f"output: the float values as computed, {_span(lo, hi)} (.npy or float "
                     "TIFF: no --output-map)")
        return lines
    how = pipeline.output_mapping()
    out = {
        "clip": (lo, hi),
        "abs": (0.0 if lo < 0 < hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi))),
        "offset": (lo + (full + 1) / 2, hi + (full + 1) / 2),
        "normalize": (0.0, full),
    }[how]
    fits = out[0] >= 0 and out[1] <= full
    lines.append(f"output: --output-map {how}: {_span(*out)} "
                 + (f"fits 0 .. {full:g}" if fits else f"will clip to 0 .. {full:g}"))
    return lines



def _pool_lines(n: int, stage: Any, shape: tuple[int, int]) -> list[str]:
    """A pooling stage in the --dry-run report: its settings and PyTorch's size formula,
    ``floor((n + 2p - d(k-1) - 1) / s) + 1`` (ceil with --pool-ceil)."""
    (kh, kw), (sy, sx) = stage.size, stage.stride or stage.size
    (py, px), (dy, dx) = stage.padding, stage.dilation
    oh, ow = stage.out_shape(shape)
    fill = "-inf" if stage.op == "max" else "0" + ("" if stage.count_include_pad
                                                   else ", not counted")
    padding = f"padding {py}x{px} ({fill})" if py or px else "no padding"
    settings = [f"stride {sy}x{sx}", padding]
    if (dy, dx) != (1, 1):
        settings.append(f"dilation {dy}x{dx}")
    if stage.ceil_mode:
        settings.append("ceil_mode")
    rounding = "ceil" if stage.ceil_mode else "floor"

    def formula(size: int, k: int, s: int, p: int, d: int, out: int) -> str:
        pad = f"+2*{p}" if p else ""
        span = f"({d}*({k}-1)+1)" if d != 1 else f"{k}"
        text = f"{rounding}(({size}{pad}-{span})/{s})+1"
        counted = -(-(size + 2 * p - d * (k - 1) - 1) // s) + 1
        if stage.ceil_mode and out and counted != out:
            return f"{text}-1 = {out} (the last window would start in the padding)"
        return f"{text} = {out}"

    return [
        f"stage {n}: {stage.op} pool {kh}x{kw}, {', '.join(settings)}",
        f"    rows    {formula(shape[0], kh, sy, py, dy, oh)}",
        f"    columns {formula(shape[1], kw, sx, px, dx, ow)}",
    ]


def _span(lo: float, hi: float) -> str:
    return f"{lo:.6g} .. {hi:.6g}"
