"""How ``imgconv list`` and ``imgconv show`` draw kernels in the terminal, with Rich.

Imported by those commands only: Rich costs start-up time that ``apply`` does
not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from imgconv.cli.output import stdout

if TYPE_CHECKING:
    from imgconv.kernels import CatalogEntry
    from imgconv.kernels.families import Family


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


# Larger matrices are summarised in the terminal (drawing 301×301 cells takes seconds);
# --json always has every number.
MAX_GRID = 25
EXCERPT = 5  # values either side of the centre in a summary's centre row


def _summary(rows: list[list[float]]) -> Text:
    h, w = len(rows), len(rows[0])
    values = [v for row in rows for v in row]
    nonzero = sum(1 for v in values if v)
    centre = rows[h // 2]
    lo, hi = max(0, w // 2 - EXCERPT), min(w, w // 2 + EXCERPT + 1)
    excerpt = Text()
    excerpt.append("… " if lo > 0 else "")
    for v in centre[lo:hi]:
        excerpt.append_text(_cell(v))
        excerpt.append(" ")
    excerpt.append("…" if hi < w else "")
    return Text.assemble(
        f"  {h}×{w}, too large to draw (--json has every value): "
        f"min {_num(min(values))}, max {_num(max(values))}, {nonzero} non-zero\n"
        f"  centre row {h // 2}, columns {lo}–{hi - 1}: ",
        excerpt,
    )


def _vector(values: list[float]) -> str:
    if len(values) <= MAX_GRID:
        return " ".join(map(_num, values))
    ends = EXCERPT // 2 + 1
    return (" ".join(map(_num, values[:ends])) + " … " + " ".join(map(_num, values[-ends:]))
            + f" ({len(values)} values)")


def _draw(rows: list[list[float]]) -> None:
    if len(rows) > MAX_GRID or len(rows[0]) > MAX_GRID:
        stdout.print(_summary(rows))
    else:
        stdout.print(_grid(rows))


def _matrix(title: str, value: Any, channels: bool) -> None:
    if channels:
        for c, rows in enumerate(value, 1):
            stdout.print(f"{title}, channel {c}:")
            _draw(rows)
    else:
        stdout.print(f"{title}:")
        _draw(value)


def _table(pairs: list[tuple[str, str]]) -> Table:
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    for key, value in pairs:
        facts.add_row(key, Text(value))
    return facts


def _facts(info: dict[str, Any]) -> Table:
    """The facts under a kernel or a bank."""
    if info["kind"] == "bank":
        return _table([
            ("combine", f"{info['combine']} of {len(info['kernels'])} kernels"),
            ("members", ", ".join(k["name"] for k in info["kernels"])),
            ("shape", _shape(info["shape"]) + " each"),
            ("parameters", str(info["parameters"])),
            ("output", info["output"] or "(not set)"),
        ])
    pairs: list[tuple[str, str]] = []

    def add(key: str, value: str) -> None:
        pairs.append((key, value))

    add("shape", _shape(info["shape"]))
    add("sum", _num(info["sum"]))
    centre = [n // 2 for n in info["shape"][:2]]
    anchor = f"({info['anchor'][0]}, {info['anchor'][1]})"
    add("anchor", anchor + (" (centre)" if info["anchor"] == centre else ""))
    add("bias", _num(info["bias"]))
    rank = info["rank"]
    if info["separable"]:
        col = _vector(info["separable"]["column"])
        row = _vector(info["separable"]["row"])
        add("separable", f"yes (rank 1): column [{col}] × row [{row}]")
    elif isinstance(rank, list):
        add("separable", f"per channel ranks {rank}")
    else:
        add("separable", f"no (rank {rank})")
    add("parameters", str(info["parameters"]))
    add("output", info["output"] or "(not set)")
    return _table(pairs)


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


def list_table(rows: list[CatalogEntry]) -> Table:
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


def show(info: dict[str, Any], family: Family | None) -> None:
    """Draw a kernel or a bank as ``describe`` gives it, then what its family accepts."""
    if info["kind"] == "bank":
        _header(info)
        stdout.print(_facts(info))
        for member in info["kernels"]:
            stdout.print()
            stdout.print(Text.assemble(("── ", "dim"), (member["name"], "bold")))
            _show_kernel(member, header=False)
        return
    _show_kernel(info)
    if family:
        stdout.print(Text(f"family: {family.accepts()}", style="dim"))
