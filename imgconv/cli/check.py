"""``imgconv check``: a pipeline run by imgconv's core and by scipy.ndimage, compared."""

from __future__ import annotations

from typing import Annotated

import typer

from imgconv.cli.options import (
    LAYER,
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
    print_error,
    print_warning,
    printable,
    report_errors,
    stdout,
)
from imgconv.errors import UsageError


def check_command(
    inputs: Inputs,
    kernel: Kernels = None,
    pipeline_file: PipelineFile = None,
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
    tol: Tol = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")
    ] = False,
    max_pixels: MaxPixels = 100_000_000,
    debug: Debug = False,
) -> None:
    """Run the pipeline with imgconv's core and with scipy.ndimage; compare per channel."""
    from rich.table import Table
    from rich.text import Text

    from imgconv import batch
    from imgconv.check import compare, reference
    from imgconv.errors import ImageError, ImgconvError
    from imgconv.imageio import load

    with report_errors(debug):
        check_core_settings(None, None)
        pipeline = build_pipeline(
            kernel,
            pipeline_file,
            "auto",
            layer_options(locals()),
        )
        check_geometry(pipeline, max_pixels)
        check_tol(tol)
        unreadable: list[str] = []
        sources = batch.expand_inputs(inputs, recursive=recursive, warnings=unreadable)
        for line in unreadable:  # a locked sub-folder, as apply says it
            print_warning(line)
        if not sources:
            raise UsageError("no input images found")
        stdin = read_stdin(max_pixels) if any(s.path == batch.STDIO for s in sources) else None
        table = Table(title=f"imgconv vs scipy.ndimage: {pipeline.name}", title_justify="left")
        table.add_column("input", overflow="fold")  # a path is never cut short
        for col in ("channel", "max |error|", "mean |error|", "tolerance", ""):
            table.add_column(col, no_wrap=True)
        failed = 0
        errors: list[str] = []
        for source in sources:
            try:
                if source.problem is not None:  # a folder that cannot be read
                    raise ImageError(source.problem)
                picture = load(
                    stdin if source.path == batch.STDIO and stdin is not None else source.path,
                    gray=gray,
                    max_pixels=max_pixels,
                )
                batch.check_stage_sizes(pipeline, picture, max_pixels, source.path)
                ours = pipeline.run(picture.pixels)
                result = compare(ours, reference(pipeline, picture.pixels), tol)
            except ImgconvError as exc:
                message = str(exc)
                errors.append(
                    message if message.startswith(source.path) else f"{source.path}: {message}"
                )
                continue
            for c, (mx, mean) in enumerate(zip(result.max_abs, result.mean_abs, strict=True)):
                ok = mx <= result.tolerance
                failed += not ok
                table.add_row(
                    Text(printable(source.path)),  # a path is text, not markup
                    str(c),
                    f"{mx:.3g}",
                    f"{mean:.3g}",
                    f"{result.tolerance:.3g}",
                    "[green]ok" if ok else "[red]FAIL",
                )
        if table.row_count:  # no empty table when no input could be checked
            stdout.print(table)
        for line in errors:
            print_error(line)
        if failed or errors:
            raise typer.Exit(1)
