"""A CNN-style layer stack: convolution stages, activation, pooling, then an output map.

- :mod:`~imgconv.pipeline.options`: a layer's settings and defaults (:class:`LayerOptions`);
- :mod:`~imgconv.pipeline.layer`: their checks, and the stages they make;
- :mod:`~imgconv.pipeline.stages`: convolution, activation and pooling stages;
- :mod:`~imgconv.pipeline.spec`: pipeline YAML files;
- :mod:`~imgconv.pipeline.run`: :class:`Pipeline`, the stages run in order;
- :mod:`~imgconv.pipeline.mapping`: float results to image values (clip, abs, offset, normalize);
- :mod:`~imgconv.pipeline.alpha` and :mod:`~imgconv.pipeline.render`: a picture, with its
  alpha, through the pipeline to what is encoded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgconv.pipeline.options import LayerOptions

if TYPE_CHECKING:
    from imgconv.pipeline.layer import (
        CONV_MODES,
        OUTPUT_MAPPINGS,
        conv_stage,
        parse_padding,
        parse_pair,
        pool_stage,
    )
    from imgconv.pipeline.mapping import CLIP_WARNING_FRACTION, map_output
    from imgconv.pipeline.run import Pipeline
    from imgconv.pipeline.stages import ActivationStage, ConvStage, PoolStage, Stage

#: where each name of the package lives; loaded on first use, so that the command
#: line's start-up can read LayerOptions without numpy
_HOMES = {
    "CONV_MODES": "layer", "OUTPUT_MAPPINGS": "layer", "conv_stage": "layer",
    "parse_pair": "layer", "parse_padding": "layer", "pool_stage": "layer",
    "CLIP_WARNING_FRACTION": "mapping", "map_output": "mapping", "Pipeline": "run",
    "ActivationStage": "stages", "ConvStage": "stages", "PoolStage": "stages", "Stage": "stages",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"imgconv.pipeline.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'imgconv.pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "CLIP_WARNING_FRACTION",
    "CONV_MODES",
    "OUTPUT_MAPPINGS",
    "ActivationStage",
    "ConvStage",
    "LayerOptions",
    "Pipeline",
    "PoolStage",
    "Stage",
    "conv_stage",
    "map_output",
    "parse_padding",
    "parse_pair",
    "pool_stage",
]
