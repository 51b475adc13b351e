"""The options ``apply`` and ``check`` share, and what they build: pipeline, core settings."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgconv.cli.output import FLAGS
from imgconv.errors import UsageError
from imgconv.pipeline.options import LayerOptions

if TYPE_CHECKING:
    from imgconv.pipeline.run import Pipeline

#: the layer's defaults, as the options show them
LAYER = LayerOptions()

PANEL_CONV = "Convolution"
PANEL_OUT = "Output"
PANEL_RUN = "Running"

Inputs = Annotated[
    list[str],
    typer.Argument(
        metavar="INPUT...",
        help="Image files, folders, glob patterns, or - for standard input.",
        show_default=False,
    ),
]
Kernels = Annotated[
    list[str] | None,
    typer.Option(
        "-k",
        "--kernel",
        metavar="KERNEL",
        help="Kernel: a name, family (gaussian:sigma=2), inline matrix "
        "('0 1 0; 1 -4 1; 0 1 0'), YAML file or .npy weights ((kH,kW), (kH,kW,C_in) or "
        "PyTorch's (C_out,C_in,kH,kW)). Repeat to chain.",
        rich_help_panel=PANEL_CONV,
        show_default=False,
    ),
]
PipelineFile = Annotated[
    Path | None,
    typer.Option(
        "--pipeline",
        metavar="FILE",
        help="A pipeline YAML file (instead of -k and the layer options).",
        rich_help_panel=PANEL_CONV,
        show_default=False,
    ),
]
Mode = Annotated[
    str,
    typer.Option(
        "--mode",
        metavar="MODE",
        help="correlate (the kernel as written, as CNNs do) or convolve (flipped).",
        rich_help_panel=PANEL_CONV,
    ),
]
PaddingOpt = Annotated[
    str,
    typer.Option(
        "--padding",
        metavar="PADDING",
        help="same, valid, full, N, N,M or T,B,L,R.",
        rich_help_panel=PANEL_CONV,
    ),
]
PadMode = Annotated[
    str,
    typer.Option(
        "--pad-mode",
        metavar="MODE",
        help="Border: reflect, mirror, nearest, wrap or constant.",
        rich_help_panel=PANEL_CONV,
    ),
]
Cval = Annotated[
    float,
    typer.Option(
        "--cval",
        metavar="V",
        help="Fill value for --pad-mode constant.",
        rich_help_panel=PANEL_CONV,
    ),
]
Stride = Annotated[
    str, typer.Option("--stride", metavar="N[,M]", help="N or N,M.", rich_help_panel=PANEL_CONV)
]
Dilation = Annotated[
    str, typer.Option("--dilation", metavar="N[,M]", help="N or N,M.", rich_help_panel=PANEL_CONV)
]
Activation = Annotated[
    str,
    typer.Option(
        "--activation",
        metavar="NAME",
        help="After the last kernel: none, relu or abs.",
        rich_help_panel=PANEL_CONV,
    ),
]
PoolOp = Annotated[
    str | None,
    typer.Option(
        "--pool",
        metavar="OP",
        help="Pooling after the activation: max or avg.",
        rich_help_panel=PANEL_CONV,
        show_default=False,
    ),
]
PoolSize = Annotated[
    str | None,
    typer.Option(
        "--pool-size",
        metavar="N[,M]",
        help="Pooling window, N or N,M.",
        rich_help_panel=PANEL_CONV,
        show_default=False,
    ),
]
PoolStride = Annotated[
    str | None,
    typer.Option(
        "--pool-stride",
        metavar="N[,M]",
        help="Pooling step, N or N,M (default: the size).",
        rich_help_panel=PANEL_CONV,
        show_default=False,
    ),
]
Bias = Annotated[
    str | None,
    typer.Option(
        "--bias",
        metavar="B",
        help="Added to the kernel's maps: a number, one per map (0.1,-0.2) or a .npy file "
        "(a layer's biases).",
        rich_help_panel=PANEL_CONV,
        show_default=False,
    ),
]
PoolPadding = Annotated[
    str,
    typer.Option(
        "--pool-padding",
        metavar="N[,M]",
        help="Pooling padding on both sides, at most half the window (max pads with -inf, "
        "avg with 0).",
        rich_help_panel=PANEL_CONV,
    ),
]
PoolDilation = Annotated[
    str,
    typer.Option(
        "--pool-dilation",
        metavar="N[,M]",
        help="Spacing of a max pooling window's taps.",
        rich_help_panel=PANEL_CONV,
    ),
]
PoolCeil = Annotated[
    bool,
    typer.Option(
        "--pool-ceil",
        metavar="",
        help="Round the number of pooling windows up (PyTorch's ceil_mode).",
        rich_help_panel=PANEL_CONV,
    ),
]
PoolCountPad = Annotated[
    bool,
    typer.Option(
        "--pool-count-pad/--no-pool-count-pad",
        help="Avg pooling divides by the window's padded places too (PyTorch's "
        "count_include_pad).",
        rich_help_panel=PANEL_CONV,
    ),
]
Gray = Annotated[
    bool,
    typer.Option(
        "--gray",
        metavar="",
        help="Convert to luminance first (ITU-R 601-2, as Pillow's L).",
        rich_help_panel=PANEL_CONV,
    ),
]
MaxPixels = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        metavar="N",
        min=1,
        help="Refuse larger images (decompression bombs) without decoding them; a TIFF, "
             ".npy or .zarr streams instead (see --tiles).",
        rich_help_panel=PANEL_RUN,
    ),
]
Debug = Annotated[
    bool, typer.Option("--debug", metavar="", help="Show tracebacks.", rich_help_panel=PANEL_RUN)
]
Tol = Annotated[
    float | None,
    typer.Option(
        "--tol",
        min=0.0,
        metavar="T",
        help="Largest allowed |imgconv - scipy| (default 1e-4 x max(1, max |result|)).",
        rich_help_panel=PANEL_RUN,
        show_default=False,
    ),
]


def layer_options(values: dict[str, Any]) -> LayerOptions:
    """The LayerOptions of a command's parameters (``locals()``), named as its fields."""
    return LayerOptions(**{f.name: values[f.name] for f in dataclasses.fields(LayerOptions)})


def build_pipeline(
    kernels: list[str] | None, pipeline_file: Path | None, output_map: str, layer: LayerOptions
) -> Pipeline:
    """The pipeline the flags describe: ``-k`` and the layer's, or a ``--pipeline`` file."""
    from imgconv.pipeline.layer import OUTPUT_MAPPINGS, choice
    from imgconv.pipeline.run import Pipeline

    if pipeline_file is not None:
        given = (["-k"] if kernels else []) + [FLAGS[name] for name in layer.changed()]
        if given:
            raise UsageError(f"--pipeline describes the whole layer; drop {', '.join(given)}")
        pipeline = Pipeline.from_yaml(pipeline_file)
        if output_map != "auto":
            pipeline = dataclasses.replace(
                pipeline, output=choice(output_map, OUTPUT_MAPPINGS, "output_map"))
        return pipeline
    return Pipeline.from_options(kernels or [], layer, output=output_map)



def check_tol(tol: float | None) -> None:
    if tol is not None and not math.isfinite(tol):
        raise UsageError(f"--tol must be a finite number >= 0, got {tol}")


def check_geometry(pipeline: Pipeline, max_pixels: int) -> None:
    """Refuse geometry (padding, dilation) that would be too large for any image, up front."""
    problem = pipeline.size_problem((1, 1), max_pixels)
    if problem is not None:
        raise UsageError(f"{problem}, even for a 1x1 image (--max-pixels)")


def read_stdin(max_pixels: int) -> bytes:
    """Standard input, at most what an image of ``max_pixels`` pixels can need."""
    from imgconv.imageio import read_stdin, stdin_limit

    return read_stdin(sys.stdin.buffer, stdin_limit(max_pixels))



def check_core_settings(threads: int | None, jit: bool | None) -> None:
    """Apply --threads and --jit, and check them and the environment's defaults, up front.

    A bad ``IMGCONV_THREADS`` or ``IMGCONV_JIT``, or ``--jit`` (or
    ``IMGCONV_JIT=1``) without a working numba, is a usage error (exit 2).
    """
    from imgconv.core import jit as compiled
    from imgconv.core.threads import get_threads, set_threads

    try:
        set_threads(threads)
        get_threads()  # checks IMGCONV_THREADS
        compiled.set_jit(jit)
        compiled.enabled()  # checks IMGCONV_JIT
    except (ValueError, compiled.JitUnavailable) as exc:
        message = str(exc)
        if jit and isinstance(exc, compiled.JitUnavailable):
            message = "--jit: " + message
        raise UsageError(message) from None
