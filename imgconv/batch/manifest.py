"""The run's JSON record (the manifest): where it may go, and writing it."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from imgconv.batch.job import write_all
from imgconv.batch.tasks import STDIO, Options, Result, Task, file_id, output_key
from imgconv.errors import ImageError, UsageError
from imgconv.imageio import (
    write_atomic,
)

if TYPE_CHECKING:

    pass

def check_manifest_path(path: str, tasks: Sequence[Task], *, overwrite: bool) -> None:
    """Refuse a manifest that would replace an input, an output or an existing file.

    ``-`` is standard output, unless an image goes there.
    """
    if path == "":
        raise UsageError("`manifest`: the path is empty ('')")
    if path == STDIO:
        if any(t.target == STDIO for t in tasks):
            raise UsageError("`manifest=-`: standard output already carries the image "
                             "(`output=-`); give the manifest a file name")
        return
    if os.path.isdir(path):
        raise UsageError(f"`manifest` {path}: is a folder; give a file name such as run.json")
    ident, key = file_id(path), output_key(path)
    for task in tasks:
        if ident is not None and task.source.path != STDIO and file_id(task.source.path) == ident:
            raise UsageError(f"`manifest` {path}: is an input image; refusing to replace it")
        if task.target != STDIO and output_key(task.target) == key:
            raise UsageError(f"`manifest` {path}: is also the output of {task.source.path}")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(f"`manifest` {path}: already exists (use `overwrite=True` to replace it)")


def write_manifest(path: str, options: Options, results: Sequence[Result], *, overwrite: bool,
                   version: str) -> None:
    """A JSON record of the run: version, resolved pipeline, and each input's outcome."""
    import json

    doc = {
        "imgconv": version,
        "pipeline": options.pipeline.to_dict(),
        "output_map": options.pipeline.output_mapping(),  # what "auto" resolved to
        "inputs": [asdict(r) for r in results],
    }
    data = json.dumps(doc, indent=2).encode()
    if path == STDIO:
        write_all(sys.stdout.buffer, data + b"\n")
        return
    target = Path(path)
    if os.path.isdir(target):  # made during the run (an output's folder)
        raise ImageError(f"`manifest` {path}: is a folder; give a file name such as run.json")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ImageError(f"`manifest` {path}: cannot create the folder {target.parent}: "
                         "a file is in the way") from None
    except OSError as exc:
        raise ImageError(f"`manifest` {path}: cannot create the folder {target.parent} "
                         f"({exc.strerror or exc})") from None
    try:
        write_atomic(target, lambda stream: stream.write(data), overwrite=overwrite)
    except OSError as exc:
        raise ImageError(f"`manifest` {path}: cannot write it ({exc.strerror or exc})") from None
