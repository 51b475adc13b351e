"""Pipeline files: a YAML document of stages, read into checked stages.

Messages name a stage's keys as the file writes them (``pad_mode``,
``pool size``), where the library says `pad_mode` (:mod:`imgconv.errors`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgconv.core.pooling import ACTIVATIONS
from imgconv.errors import UsageError
from imgconv.kernels.model import suggest
from imgconv.kernels.weights import is_weights_file, load_weights
from imgconv.pipeline.layer import (
    OUTPUT_MAPPINGS,
    channel_problem,
    choice,
    conv_stage,
    pool_stage,
)
from imgconv.pipeline.options import LayerOptions
from imgconv.pipeline.stages import ActivationStage, ConvStage, Stage

#: a convolution stage's keys: the layer's settings (``pad-mode`` too, as the flag spells it)
CONV_KEYS = (*LayerOptions.CONV, "pad-mode")
#: what a stage is: a convolution (``kernel`` or ``weights`` with the settings beside it, or
#: ``conv`` with them inside), an activation or pooling
STAGE_KINDS = ("kernel", "weights", "conv", "activation", "pool")
#: a pooling stage's keys (PyTorch's names)
POOL_KEYS = ("op", "size", "stride", "padding", "dilation", "ceil_mode", "count_include_pad")
#: how messages name a setting in a file, where it is not the key itself
KEY_WORDS = {"pool": "pool op", "pool_size": "pool size", "pool_stride": "pool stride",
             "pool_padding": "pool padding", "pool_dilation": "pool dilation",
             "pool_ceil": "pool ceil_mode", "pool_count_pad": "pool count_include_pad",
             "output_map": "output", "kernel": "kernel", "pipeline": "pipeline file"}
_PARAMETER = re.compile(r"`([a-z_]+)(?:=([^`]*))?`")


def as_keys(message: str) -> str:
    """A library message in a pipeline file's words: `pool_size` is ``pool size``.

    >>> as_keys("`pool` needs `pool_size` N or N,M")
    'pool op needs pool size N or N,M'
    """
    def key(match: re.Match[str]) -> str:
        word = KEY_WORDS.get(match[1], match[1])
        return word if match[2] is None else f"{word} {match[2]}"

    return _PARAMETER.sub(key, message)


def read(path: str | Path) -> tuple[tuple[Stage, ...], str]:
    """The stages and output map of a pipeline YAML file (see docs/cli.md, "Pipeline files")."""
    import yaml

    from imgconv.kernels.parse import Refused, read_text, safe_loader

    try:
        text = read_text(path)
    except Refused as exc:
        raise UsageError(f"{path}: the pipeline file {exc}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the pipeline file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a pipeline YAML file (not UTF-8 text)") from None
    try:
        doc = yaml.load(text, Loader=safe_loader())  # a safe loader
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}:" if where is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UsageError(f"{path}:{line} not valid YAML ({problem})") from None
    except Refused as exc:
        raise UsageError(f"{path}:{f' line {exc.line}:' if exc.line else ''} {exc}") from None
    try:
        return parse(doc, Path(path).parent)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


def parse(doc: object, base: Path | None = None) -> tuple[tuple[Stage, ...], str]:
    """The stages and output map a pipeline document describes; ``base`` is the folder that
    relative ``.npy`` weights and biases are in (None: the working folder)."""
    try:
        return _parse(doc, base)
    except UsageError as exc:
        raise UsageError(as_keys(str(exc))) from None


def _parse(doc: object, base: Path | None) -> tuple[tuple[Stage, ...], str]:
    if not isinstance(doc, dict) or "stages" not in doc:
        raise UsageError("a pipeline is a mapping with a 'stages' list")
    _check_keys(doc, ("stages", "output"), "pipeline")
    items = doc["stages"]
    if not isinstance(items, list) or not items:
        raise UsageError("'stages' must be a non-empty list")
    stages: list[Stage] = []
    for n, item in enumerate(items, 1):
        where = f"stage {n}"
        if not isinstance(item, dict):
            raise UsageError(f"{where}: must be a mapping with {', '.join(STAGE_KINDS)}")
        kinds = [k for k in STAGE_KINDS if k in item]
        if len(kinds) != 1:
            raise UsageError(f"{where}: must have exactly one of {', '.join(STAGE_KINDS)}")
        try:
            if kinds[0] == "conv":
                if len(item) > 1 or not isinstance(item["conv"], dict):
                    raise UsageError("conv must be the stage's one key, a mapping of "
                                     "weights (or kernel), bias and the layer's settings")
                item = item["conv"]
                weights = [k for k in ("weights", "kernel") if k in item]
                if len(weights) != 1:
                    raise UsageError("conv must have exactly one of weights, kernel")
                kinds = [weights[0]]
            if kinds[0] in ("kernel", "weights"):
                _check_keys(item, (kinds[0], *CONV_KEYS, "bias"), where)
                options = {k.replace("-", "_"): v for k, v in item.items() if k != kinds[0]}
                stages.append(_conv_stage(item[kinds[0]], n, options, base))
            elif kinds[0] == "activation":
                _check_keys(item, ("activation",), where)
                stages.append(ActivationStage(
                    choice(item["activation"], ACTIVATIONS, "activation")))
            else:
                _check_keys(item, ("pool",), where)
                spec = item["pool"]
                if not isinstance(spec, dict):
                    raise UsageError("pool must be a mapping {op, size, stride, ...}")
                _check_keys(spec, POOL_KEYS, "pool")
                stages.append(pool_stage(
                    spec.get("op"), spec.get("size"), spec.get("stride"),
                    padding=spec.get("padding", 0), dilation=spec.get("dilation", 1),
                    ceil_mode=spec.get("ceil_mode", False),
                    count_include_pad=spec.get("count_include_pad", True)))
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
    problem = channel_problem(stages)
    if problem is not None:
        raise UsageError(problem)
    output = doc.get("output", "auto")
    return tuple(stages), choice(output, OUTPUT_MAPPINGS, "output_map")


def _conv_stage(kernel: object, n: int, options: dict[str, Any], base: Path | None
                ) -> ConvStage:
    """A pipeline file's ``kernel:``: a spec (text, a number, a list of rows) or a mapping
    as a bank member takes (``{matrix: ..., scale: ...}``), named ``stage-N`` by default."""
    if isinstance(kernel, dict):
        from imgconv.kernels.library import from_mapping

        built = from_mapping(kernel, f"stage-{n}")
        return conv_stage(built.name, kernel=built, base=base, **options)
    if isinstance(kernel, bool) or not isinstance(kernel, (str, int, float, list)):
        from imgconv.kernels.text import short

        raise UsageError(f"kernel must be a kernel spec or a mapping, got {short(kernel)}")
    spec = str(kernel)
    if is_weights_file(spec) and base is not None and not Path(spec).is_absolute():
        # a pipeline file's weights lie beside it, as its author saw them
        return conv_stage(spec, kernel=load_weights(base / spec), base=base, **options)
    return conv_stage(spec, base=base, **options)


def _check_keys(mapping: dict[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise UsageError(
                f"unknown key {key!r} in {where}{suggest(str(key), allowed)}; "
                f"allowed: {', '.join(allowed)}"
            )
