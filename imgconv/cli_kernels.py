"""``imgconv list`` and ``imgconv show``: browse the kernel library.

numpy and the kernel library are imported inside the commands, so that
``imgconv --help`` stays fast; neither command touches scipy or PIL.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from imgconv.cli_common import report_errors, stdout
from imgconv.errors import KernelError

if TYPE_CHECKING:
    from imgconv.kernels import CatalogEntry


def _json(value: object) -> str:
    """Indented JSON with each list of numbers on one line, so a matrix reads as rows."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return re.sub(
        r"\[\n\s*([^\[\]{}]*?)\n\s*\]", lambda m: "[" + re.sub(r",\n\s*", ", ", m[1]) + "]", text
    )


def _shape(shape: list[int] | tuple[int, ...] | None) -> str:
    return "×".join(map(str, shape)) if shape else "any"


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _cell(value: float) -> Text:
    style = "red" if value < 0 else "green" if value > 0 else "dim"
    return Text(_num(value), style=style)


def _grid(rows: list[list[float]]) -> Table:
    grid = Table.grid(padding=(0, 2), pad_edge=True)
    for _ in rows[0]:
        grid.add_column(justify="right")
    for row in rows:
        grid.add_row(*(_cell(v) for v in row))
    return grid


def _matrix(title: str, value: Any, channels: bool) -> None:
    if channels:
        for c, rows in enumerate(value, 1):
            stdout.print(f"{title}, channel {c}:")
            stdout.print(_grid(rows))
    else:
        stdout.print(f"{title}:")
        stdout.print(_grid(value))


def _facts(info: dict[str, Any]) -> Table:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()

    def add(key: str, value: str) -> None:
        facts.add_row(key, Text(value))

    add("shape", _shape(info["shape"]))
    add("sum", _num(info["sum"]))
    centre = [n // 2 for n in info["shape"][:2]]
    anchor = f"({info['anchor'][0]}, {info['anchor'][1]})"
    add("anchor", anchor + (" (centre)" if info["anchor"] == centre else ""))
    add("bias", _num(info["bias"]))
    rank = info["rank"]
    if info["separable"]:
        col = " ".join(map(_num, info["separable"]["column"]))
        row = " ".join(map(_num, info["separable"]["row"]))
        add("separable", f"yes (rank 1): column [{col}] × row [{row}]")
    elif isinstance(rank, list):
        add("separable", f"per channel ranks {rank}")
    else:
        add("separable", f"no (rank {rank})")
    add("parameters", str(info["parameters"]))
    add("output", info["output"] or "(not set)")
    return facts


def _header(info: dict[str, Any]) -> None:
    stdout.print(Text.assemble((info["name"], "bold"), f"  {info['kind']} · {info['source']}"))
    if info["description"]:
        stdout.print(info["description"])
    if info["tags"]:
        stdout.print(Text("tags: " + ", ".join(info["tags"]), style="dim"))


def _show_kernel(info: dict[str, Any], header: bool = True) -> None:
    if header:
        _header(info)
    channels = len(info["shape"]) == 3
    _matrix(f"matrix {_shape(info['shape'])} as written", info["matrix"], channels)
    if info["scale"] != 1:
        _matrix(f"weights = matrix × {_num(info['scale'])}", info["weights"], channels)
    else:
        stdout.print("weights = matrix (scale 1)")
    stdout.print(_facts(info))


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
) -> None:
    """Show a kernel: its matrix and weights (colour-coded), sum, anchor, separability."""
    with report_errors():
        from imgconv.kernels import FAMILIES, describe, resolve

        info = describe(resolve(spec))
    if json_:
        typer.echo(_json(info))
        return
    if info["kind"] == "bank":
        _header(info)
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold")
        facts.add_column()
        facts.add_row("combine", f"{info['combine']} of {len(info['kernels'])} kernels")
        facts.add_row("members", ", ".join(k["name"] for k in info["kernels"]))
        facts.add_row("shape", _shape(info["shape"]) + " each")
        facts.add_row("parameters", str(info["parameters"]))
        facts.add_row("output", info["output"] or "(not set)")
        stdout.print(facts)
        for member in info["kernels"]:
            stdout.print()
            stdout.print(Text.assemble(("── ", "dim"), (member["name"], "bold")))
            _show_kernel(member, header=False)
        return
    _show_kernel(info)
    family = FAMILIES.get(info["name"].partition(":")[0]) if info["source"] == "family" else None
    if family:
        stdout.print(Text(f"family: {family.accepts()}", style="dim"))


def _list_table(rows: list[CatalogEntry]) -> Table:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in ("name", "size", "kind", "source", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        source = row.source
        if row.shadows:
            source += f" (shadows {', '.join(row.shadows)})"
        size = _shape(row.shape)
        if row.members:
            size = f"{len(row.members)} × {size}"
        table.add_row(
            Text(row.name, style="bold"), size, row.kind, Text(source), Text(row.description)
        )
    return table


def list_command(
    tag: Annotated[
        str | None, typer.Option("--tag", metavar="TAG", help="Only kernels with this tag.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", metavar="", help="Print a JSON array.")] = False,
) -> None:
    """List the kernels, banks and families on the search path."""
    with report_errors():
        from imgconv.kernels import catalog
        from imgconv.kernels.model import suggest

        rows = catalog()
        if tag is not None:
            tags = sorted({t for r in rows for t in r.tags})
            rows = [r for r in rows if tag in r.tags]
            if not rows:
                raise KernelError(
                    f"no kernel has the tag {tag!r}{suggest(tag, tags)}; tags: {', '.join(tags)}"
                )
    if json_:
        typer.echo(_json([r.to_json() for r in rows]))
        return
    stdout.print(_list_table(rows))
