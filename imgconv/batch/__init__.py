"""Inputs to outputs: a batch of image files through one pipeline.

A batch never stops for one bad file: each job returns a :class:`Result`
whose status is ``written``, ``skipped`` or ``failed`` (with the reason).

- :mod:`~imgconv.batch.tasks`: the inputs (files, folders, patterns) and each one's output;
- :mod:`~imgconv.batch.job`: one input filtered into its output, safely;
- :mod:`~imgconv.batch.workers`: executors (this process or worker processes) and :func:`run`;
- :mod:`~imgconv.batch.manifest`: the run's JSON record;
- :mod:`~imgconv.batch.dask`: the executor for a Dask cluster (the ``scale`` extra).
"""

from __future__ import annotations

from imgconv.batch.dask import DaskExecutor
from imgconv.batch.job import (
    TEMPORARY_NAME,
    Conflict,
    check_stage_sizes,
    output_conflict,
    process,
    remove_temporary_files,
)
from imgconv.batch.manifest import check_manifest_path, write_manifest
from imgconv.batch.tasks import (
    STDIO,
    Options,
    Result,
    Source,
    Status,
    Task,
    check_depth,
    check_maps,
    expand_inputs,
    file_id,
    input_ids,
    plan,
    skipped_subfolders,
)
from imgconv.batch.workers import (
    Executor,
    ProcessExecutor,
    SerialExecutor,
    available_cpus,
    make_executor,
    run,
)

__all__ = [
    "STDIO",
    "TEMPORARY_NAME",
    "Conflict",
    "DaskExecutor",
    "Executor",
    "Options",
    "ProcessExecutor",
    "Result",
    "SerialExecutor",
    "Source",
    "Status",
    "Task",
    "available_cpus",
    "check_depth",
    "check_manifest_path",
    "check_maps",
    "check_stage_sizes",
    "expand_inputs",
    "file_id",
    "input_ids",
    "make_executor",
    "output_conflict",
    "plan",
    "process",
    "remove_temporary_files",
    "run",
    "skipped_subfolders",
    "write_manifest",
]
