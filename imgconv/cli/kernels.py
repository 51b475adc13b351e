"""``imgconv list`` and ``imgconv show``: browse the kernel library.

numpy, the kernel library and Rich's tables (:mod:`imgconv.cli.views`) are
imported inside the commands, so that ``imgconv --help`` and ``apply`` start
fast; neither command touches scipy or PIL.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from imgconv.cli.output import report_errors, stdout
from imgconv.errors import KernelError


def _json(value: object) -> str:
    """Indented JSON with each list of numbers on one line, so a matrix reads as rows."""
    import json

    text = json.dumps(value, indent=2, ensure_ascii=False)
    return re.sub(
        r"\[\n\s*([^\[\]{}]*?)\n\s*\]", lambda m: "[" + re.sub(r",\n\s*", ", ", m[1]) + "]", text
    )


def show_command(
    spec: Annotated[
        str,
        typer.Argument(
            metavar="SPEC",
            help="A kernel name, family (gaussian:sigma=2), inline matrix "
            "('0 1 0; 1 -4 1; 0 1 0'), file.yaml or file.yaml:name.",
        ),
    ],
    json_: Annotated[
        bool, typer.Option("--json", metavar="", help="Print one JSON object.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", metavar="", help="Show tracebacks.")] = False,
) -> None:
    """Show a kernel: its matrix and weights (colour-coded), sum, anchor, separability."""
    with report_errors(debug):
        from imgconv.kernels import FAMILIES, describe, resolve

        info = describe(resolve(spec))
    if json_:
        stdout.write(_json(info) + "\n")
        return
    from imgconv.cli import views

    family = FAMILIES.get(info["name"].partition(":")[0]) if info["source"] == "family" else None
    views.show(info, family)


def list_command(
    tag: Annotated[
        str | None, typer.Option("--tag", metavar="TAG", help="Only kernels with this tag.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", metavar="", help="Print a JSON array.")] = False,
    debug: Annotated[bool, typer.Option("--debug", metavar="", help="Show tracebacks.")] = False,
) -> None:
    """List the kernels, banks and families on the search path."""
    with report_errors(debug):
        from imgconv.kernels import catalog
        from imgconv.kernels.model import suggest

        rows = catalog(tag)
        if not rows and tag is not None:
            tags = sorted({t for r in catalog() for t in r.tags})
            raise KernelError(
                f"no kernel has the tag {tag!r}{suggest(tag, tags)}; tags: {', '.join(tags)}"
            )
    if json_:
        stdout.write(_json([r.to_json() for r in rows]) + "\n")
        return
    from imgconv.cli import views

    stdout.print(views.list_table(rows))
