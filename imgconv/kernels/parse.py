"""Kernel YAML files: read them with line numbers, check every key, build entries.

A file holds one kernel (a mapping), several (a list of mappings, or several
YAML documents), and each entry is a kernel (``matrix``), a bank (``kernels``)
or a family (``family``). Errors name the file, the YAML line and the kernel.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgconv.errors import KernelError
from imgconv.kernels.model import (
    COMBINES,
    MAX_SIZE,
    OUTPUT_MAPS,
    Kernel,
    check_anchor,
    check_choice,
    check_matrix,
    check_number,
    check_weights,
    suggest,
)
from imgconv.kernels.text import parse_number, parse_rows, short, split_rows

#: the file names a kernel folder is searched for
YAML_SUFFIXES = (".yaml", ".yml")
COMMON_KEYS = ("name", "description", "output", "tags")
KERNEL_KEYS = (*COMMON_KEYS, "matrix", "scale", "normalize", "bias", "anchor")
BANK_KEYS = (*COMMON_KEYS, "kernels", "combine", "rotate")
FAMILY_KEYS = (*COMMON_KEYS, "family", "params")
ALL_KEYS = tuple(dict.fromkeys((*KERNEL_KEYS, *BANK_KEYS, *FAMILY_KEYS)))
ROTATIONS = (45, 90, 180)
#: Limits on every YAML file imgconv reads (kernel and pipeline files): its size,
#: how deep its lists and mappings nest, and how many values its aliases (``*name``)
#: may add by repeating an anchor (a 450-byte "billion laughs" file expands to 10⁹).
MAX_YAML_BYTES = 32 * 1024 * 1024
MAX_YAML_DEPTH = 32
MAX_ALIAS_VALUES = 100_000
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.+@\-]*$")


class LineDict(dict[Any, Any]):
    """A YAML mapping that remembers its line and each key's line (1-based)."""

    line: int = 0
    lines: dict[Any, int]


class LineList(list[Any]):
    """A YAML sequence that remembers its line and each item's line (1-based)."""

    line: int = 0
    lines: list[int]


def _construct_map(loader: Any, node: Any) -> LineDict:
    loader.flatten_mapping(node)
    data = LineDict()
    data.line, data.lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            seen = key in data
        except TypeError:
            raise KernelError(f"line {line}: a mapping key must be a plain value") from None
        if seen:
            raise KernelError(
                f"line {line}: key {short(key)} appears twice (first on line {data.lines[key]})"
            )
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = line
    return data


# The plain numbers YAML 1.1 reads as int or float that Python's int() and float() read
# the same way (no 0o10, 1_000, 1:30 or .inf): a matrix of a million numbers is built
# without PyYAML's per-value resolver and constructor, ten times faster.
_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_PLAIN_FLOAT = re.compile(r"[-+]?[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?")


def _construct_seq(loader: Any, node: Any) -> LineList:
    data = LineList()
    for child in node.value:
        value = child.value
        if child.tag == _INT_TAG and isinstance(value, str) and _PLAIN_INT.fullmatch(value):
            data.append(int(value))
        elif child.tag == _FLOAT_TAG and isinstance(value, str) and _PLAIN_FLOAT.fullmatch(value):
            data.append(float(value))
        else:
            data.append(loader.construct_object(child, deep=True))
    data.line = node.start_mark.line + 1
    data.lines = [child.start_mark.line + 1 for child in node.value]
    return data


class Refused(Exception):
    """A YAML file or document beyond :data:`MAX_YAML_BYTES`, :data:`MAX_YAML_DEPTH` or
    :data:`MAX_ALIAS_VALUES`, or not a regular file; ``line`` is 1-based, when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _collections(node: Any) -> tuple[list[Any], int]:
    """A node's child lists and mappings, and how many scalars it holds besides."""
    if isinstance(node.value, str):  # a scalar
        return [], 0
    if node.value and isinstance(node.value[0], tuple):  # a mapping's (key, value) pairs
        children = [n for pair in node.value for n in pair]
    else:
        children = node.value
    nested = [n for n in children if not isinstance(n.value, str)]
    return nested, len(children) - len(nested)


def check_node(node: Any) -> None:
    """Refuse a composed YAML document nested too deep or whose aliases repeat too much.

    Walks the lists and mappings once (each anchored one once), counting the
    values each alias of one would add if expanded, and stops as soon as a
    limit is passed. (An alias of a scalar adds one value for its own few bytes.)
    """
    sizes: dict[int, int] = {}
    added = 0
    nested, scalars = _collections(node)
    # [node, its lists and mappings left to visit, its size so far (aliases expanded)]
    stack: list[list[Any]] = [[node, nested, 1 + scalars]]
    open_ids = {id(node)}
    while stack:
        top = stack[-1]
        if not top[1]:
            stack.pop()
            open_ids.discard(id(top[0]))
            sizes[id(top[0])] = top[2]
            if stack:
                stack[-1][2] += top[2]
            continue
        child = top[1].pop()
        if id(child) in sizes:  # an alias of a list or mapping already read
            added += sizes[id(child)]
            top[2] += sizes[id(child)]
            if added > MAX_ALIAS_VALUES:
                raise Refused(
                    f"aliases (*name) repeat more than {MAX_ALIAS_VALUES} values; "
                    f"write them out or use fewer aliases",
                    child.start_mark.line + 1,
                )
        elif id(child) not in open_ids:  # (an alias of an enclosing node: PyYAML refuses it)
            if len(stack) >= MAX_YAML_DEPTH:
                raise Refused(f"lists and mappings nest more than {MAX_YAML_DEPTH} deep",
                              child.start_mark.line + 1)
            nested, scalars = _collections(child)
            stack.append([child, nested, 1 + scalars])
            open_ids.add(id(child))


@functools.cache
def safe_loader() -> Any:
    """PyYAML's safe loader (the C one when built) that applies :func:`check_node`
    to each document before building it."""
    import yaml

    class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
            if kind is yaml.ScalarNode and implicit[0]:  # a plain scalar: try numbers first
                if _PLAIN_INT.fullmatch(value):
                    return _INT_TAG
                if _PLAIN_FLOAT.fullmatch(value):
                    return _FLOAT_TAG
            return super().resolve(kind, value, implicit)

        def construct_document(self, node: Any) -> Any:
            check_node(node)
            return super().construct_document(node)

    return Loader


def read_text(path: str | os.PathLike[str], limit: int = MAX_YAML_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``, of at most ``limit`` bytes.

    Anything else (a FIFO, a device, a socket) is refused before it is opened,
    and opened without blocking, so reading it can never hang; a folder raises
    IsADirectoryError. OSError and UnicodeDecodeError propagate; the limits
    raise :class:`Refused`.
    """
    def check(info: os.stat_result) -> None:
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(info.st_mode):
            raise Refused("is not a regular file (a FIFO, device or socket?)")
        if info.st_size > limit:
            raise Refused(f"is {info.st_size / 2**20:.1f} MiB, more than the limit of "
                          f"{limit / 2**20:g} MiB for a YAML file")

    check(os.stat(path))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        check(os.fstat(fd))  # replaced between the two looks
        data = f.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"is more than the limit of {limit / 2**20:g} MiB for a YAML file")
    return data.decode("utf-8")


@functools.cache
def _loader() -> Any:
    """PyYAML's safe loader (the C one when built), keeping lines: imported on first use.

    The built-in kernels come from their index (:mod:`imgconv.kernels.index`),
    so resolving a built-in name reads no YAML and imports no PyYAML (15 ms).
    """
    class Loader(safe_loader()):  # type: ignore[misc]
        pass

    Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
    Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
    return Loader



@dataclass(frozen=True)
class Where:
    """A place in a kernel file, for messages: ``file:line: kernel 'name': ...``."""

    file: str
    line: int | None = None
    kernel: str | None = None
    #: False for text with no lines to speak of (an inline kernel on the command line)
    lines: bool = True

    def at(self, line: int | None = None, kernel: str | None = None) -> Where:
        return Where(self.file, line or self.line, kernel or self.kernel, self.lines)

    def error(self, what: object) -> KernelError:
        place = self.file + (f":{self.line}" if self.line and self.lines else "")
        if not self.file:  # a mapping inside another file (a pipeline's), which names it
            place = f"line {self.line}" if self.line else ""
        who = f" kernel {short(self.kernel)}:" if self.kernel else ""
        return KernelError(f"{place}:{who} {what}".lstrip(": "))


@dataclass(frozen=True)
class Entry:
    """One named thing a kernel file defines, before bank members are resolved.

    ``kind`` is ``"kernel"`` (``kernel`` is set), ``"bank"`` (``members``,
    ``combine`` and ``rotate``), ``"family"`` (``family`` and no ``params``) or
    ``"family-kernel"`` (``family`` and ``params``: a fixed member of a family).
    """

    name: str
    kind: str
    where: Where
    source: str
    description: str = ""
    tags: tuple[str, ...] = ()
    output: str | None = None
    kernel: Kernel | None = None
    members: tuple[tuple[object, int], ...] = ()
    combine: str = ""
    rotate: int | None = None
    family: str = ""
    params: str | dict[str, object] | None = None
    params_where: Where | None = None


def load_yaml(text: str, file: str) -> list[Any]:
    """Every YAML document in ``text``; a YAML error becomes a KernelError naming ``file``.

    >>> load_yaml("a: 1\\n---\\n- b: [1, 2]\\n", "k.yaml")
    [{'a': 1}, [{'b': [1, 2]}]]
    """
    import yaml

    try:
        return [doc for doc in yaml.load_all(text, Loader=_loader()) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise KernelError(f"{file}{line}: not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise KernelError(f"{file}: not valid YAML: {exc}") from None
    except KernelError as exc:
        raise KernelError(f"{file}: {exc}") from None
    except Refused as exc:
        raise KernelError(f"{file}{f':{exc.line}' if exc.line else ''}: {exc}") from None


def parse_file(text: str, file: str, source: str, default_name: str | None = None) -> list[Entry]:
    """All entries of a kernel file, checked; duplicate names are an error.

    ``default_name`` names a file's only entry when it has no ``name`` key.

    >>> [e.name for e in parse_file("name: a\\nmatrix: [[1]]\\n", "k.yaml", "k.yaml")]
    ['a']
    """
    return parse_documents(load_yaml(text, file), file, source, default_name)


def parse_documents(
    docs: list[Any], file: str, source: str, default_name: str | None = None
) -> list[Entry]:
    """:func:`parse_file` of a file's YAML documents, already loaded (:func:`load_yaml`)."""
    raw: list[Any] = []
    for doc in docs:
        raw.extend(doc if isinstance(doc, list) else [doc])
    if not raw:
        raise KernelError(f"{file}: holds no kernels")
    lone = default_name if len(raw) == 1 else None
    entries: list[Entry] = []
    lines: dict[str, int] = {}
    for item in raw:
        entry = parse_entry(item, Where(file), source, lone)
        if entry.name in lines:
            raise entry.where.error(
                f"duplicate name {short(entry.name)} (also defined on line {lines[entry.name]})"
            )
        lines[entry.name] = entry.where.line or 0
        entries.append(entry)
    return entries


def parse_entry(item: object, where: Where, source: str, default_name: str | None) -> Entry:
    """Check one mapping and turn it into an :class:`Entry`."""
    if not isinstance(item, dict):
        line = getattr(item, "line", None)
        raise where.at(line).error(
            f"each kernel must be a mapping with a name and a matrix, kernels or family; "
            f"got {_kind_of(item)}"
        )
    where = where.at(item.line if isinstance(item, LineDict) else None)
    name = item.get("name", default_name)
    if name is None:
        raise where.error("a kernel needs a name (files with several kernels name each one)")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise where.at(_line(item, "name")).error(
            f"name must start with a letter and hold only letters, digits and . _ + - @; "
            f"got {short(name)}"
        )
    where = where.at(kernel=name)
    for key in item:
        if key not in ALL_KEYS:
            hint = suggest(str(key), ALL_KEYS)
            raise where.at(_line(item, key)).error(
                f"unknown key {short(key)}{hint}; known keys: {', '.join(ALL_KEYS)}"
            )
    kinds = [k for k in ("matrix", "kernels", "family") if k in item]
    if len(kinds) != 1:
        what = "needs one of" if not kinds else "may have only one of"
        raise where.error(f"{what} matrix (a kernel), kernels (a bank) or family")
    kind = kinds[0]
    allowed = {"matrix": KERNEL_KEYS, "kernels": BANK_KEYS, "family": FAMILY_KEYS}[kind]
    for key in item:
        if key not in allowed:
            raise where.at(_line(item, key)).error(
                f"key {short(key)} does not apply to a {kind} entry"
            )
    common: dict[str, Any] = {
        "name": name,
        "where": where,
        "source": source,
        "description": _text(item, "description", where),
        "tags": _tags(item, where),
        "output": _choice(item, "output", OUTPUT_MAPS, where),
    }
    if kind == "matrix":
        return Entry(kind="kernel", kernel=build_kernel(item, where, name, source), **common)
    if kind == "kernels":
        return _bank_entry(item, where, common)
    family = item["family"]
    from imgconv.kernels.families import FAMILIES

    if not isinstance(family, str) or family not in FAMILIES:
        raise where.at(_line(item, "family")).error(
            f"family must be one of {', '.join(FAMILIES)}; got {short(family)}"
            + (suggest(family, FAMILIES) if isinstance(family, str) else "")
        )
    params = item.get("params")
    if isinstance(params, (int, float)) and not isinstance(params, bool):
        params = str(params)
    if params is not None and not isinstance(params, (str, dict)):
        raise where.at(_line(item, "params")).error(
            f"params must be a mapping or text like 'sigma=2, size=9'; got {short(params)}"
        )
    kind = "family" if params is None else "family-kernel"
    params_where = where.at(_line(item, "params")) if params is not None else None
    return Entry(kind=kind, family=family, params=params, params_where=params_where, **common)


def _bank_entry(item: dict[str, Any], where: Where, common: dict[str, Any]) -> Entry:
    members = item["kernels"]
    line = _line(item, "kernels")
    if not isinstance(members, list) or not members:
        raise where.at(line).error(
            "kernels must be a non-empty list of kernel names, specs or inline definitions"
        )
    lines = getattr(members, "lines", [line] * len(members))
    for m, m_line in zip(members, lines, strict=True):
        if not isinstance(m, (str, dict)):
            raise where.at(m_line).error(
                f"a bank member must be a kernel name, spec or mapping; got {_kind_of(m)}"
            )
    if "combine" not in item:
        raise where.error(f"a bank needs combine: one of {', '.join(COMBINES)}")
    combine = _choice(item, "combine", COMBINES, where)
    rotate = item.get("rotate")
    if rotate is not None and (isinstance(rotate, bool) or rotate not in ROTATIONS):
        raise where.at(_line(item, "rotate")).error(
            f"rotate must be one of {', '.join(map(str, ROTATIONS))} (degrees); got {short(rotate)}"
        )
    pairs = tuple(zip(members, lines, strict=True))
    return Entry(kind="bank", members=pairs, combine=combine or "", rotate=rotate, **common)


def build_kernel(item: dict[str, Any], where: Where, name: str, source: str) -> Kernel:
    """A :class:`Kernel` from a checked mapping with a ``matrix``."""
    matrix = parse_matrix(item["matrix"], where.at(_line(item, "matrix")))
    scale = 1.0
    if "scale" in item:
        at = where.at(_line(item, "scale"))
        scale = _number(item["scale"], "scale", at)
        if scale == 0:
            raise at.error("scale must not be zero")
    normalize = item.get("normalize", False)
    if not isinstance(normalize, bool):
        raise where.at(_line(item, "normalize")).error(
            f"normalize must be true or false, got {short(normalize)}"
        )
    if normalize:
        if "scale" in item:
            raise where.at(_line(item, "normalize")).error(
                "give scale or normalize: true, not both"
            )
        total = float(matrix.sum())
        if abs(total) <= 1e-12 * max(1.0, float(np.abs(matrix).sum())):
            raise where.at(_line(item, "normalize")).error(
                "normalize: true needs a matrix whose sum is not zero (this one sums to 0); "
                "use scale instead"
            )
        scale = 1.0 / total
    bias = _number(item["bias"], "bias", where.at(_line(item, "bias"))) if "bias" in item else 0.0
    try:
        anchor = check_anchor(item.get("anchor"), matrix.shape)
    except KernelError as exc:
        raise where.at(_line(item, "anchor")).error(exc) from None
    try:
        check_weights(matrix, scale)
    except KernelError as exc:
        raise where.at(_line(item, "scale") or _line(item, "normalize")).error(exc) from None
    return Kernel(
        name=name,
        matrix=matrix,
        scale=scale,
        bias=bias,
        anchor=anchor,
        output=_choice(item, "output", OUTPUT_MAPS, where),
        description=_text(item, "description", where),
        tags=_tags(item, where),
        source=source,
    )


def parse_matrix(value: object, where: Where) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Rows of numbers (lists or text), or a list of such matrices (one per channel)."""
    if isinstance(value, str):
        return _rows(split_rows(value), where)
    if not isinstance(value, list) or not value:
        raise where.error(
            f"matrix must be rows of numbers (or a list of matrices, one per channel); "
            f"got {_kind_of(value) if value != [] else 'an empty list'}"
        )
    if not any(isinstance(v, (list, str)) for v in value):
        # a flat list of numbers is one row, as "1 2 1" is: [1, 2, 1] is 1×3
        value = [value]
    if all(isinstance(v, list) and v and isinstance(v[0], list) for v in value):
        if len(value) > MAX_SIZE:
            raise where.error(f"matrix has {len(value)} channels, more than the limit of "
                              f"{MAX_SIZE}")
        lines = getattr(value, "lines", [where.line] * len(value))
        channels = [_rows(list(v), where.at(line), f"channel {i} ")
                    for i, (v, line) in enumerate(zip(value, lines, strict=True), 1)]
        shapes = [c.shape for c in channels]
        for i, shape in enumerate(shapes[1:], 2):
            if shape != shapes[0]:
                raise where.at(lines[i - 1]).error(
                    f"channel {i} has shape {_shape(shape)} but channel 1 has {_shape(shapes[0])}"
                )
        try:
            return check_matrix(np.stack(channels, axis=-1))
        except KernelError as exc:
            raise where.error(exc) from None
    return _rows(value, where)


def _rows(rows: Sequence[object], where: Where, prefix: str = "") -> np.ndarray[Any, Any]:
    # Sizes are checked before any number is read: refusing a 5001×5001 file is quick.
    if len(rows) > MAX_SIZE:
        raise where.error(f"{prefix}matrix has {len(rows)} rows, more than the limit of "
                          f"{MAX_SIZE}")
    lines = getattr(rows, "lines", [where.line] * len(rows))
    split: list[list[object]] = []
    for i, (row, line) in enumerate(zip(rows, lines, strict=True), 1):
        if isinstance(row, str):
            row = split_rows(row)[0] if row.strip() else []
        elif not isinstance(row, list):
            raise where.at(line).error(
                f"{prefix}matrix rows must be lists of numbers; got {_kind_of(row)}"
            )
        if len(row) > MAX_SIZE:
            raise where.at(line).error(f"{prefix}matrix row {i} has {len(row)} numbers, more "
                                       f"than the limit of {MAX_SIZE}")
        split.append(list(row))
    try:
        values = parse_rows(split, f"{prefix}matrix")
    except KernelError as exc:
        match = re.search(r"row (\d+)", str(exc))
        line = lines[int(match[1]) - 1] if match and int(match[1]) <= len(lines) else where.line
        raise where.at(line).error(exc) from None
    try:
        return check_matrix(values)
    except KernelError as exc:
        raise where.error(exc) from None


def _line(item: dict[str, Any], key: str) -> int | None:
    return item.lines.get(key) if isinstance(item, LineDict) else None


def _number(value: object, what: str, where: Where) -> float:
    try:
        return check_number(parse_number(value, what), what)
    except KernelError as exc:
        raise where.error(exc) from None


def _text(item: dict[str, Any], key: str, where: Where) -> str:
    value = item.get(key, "")
    if not isinstance(value, str):
        raise where.at(_line(item, key)).error(f"{key} must be text, got {short(value)}")
    return value.strip()


def _tags(item: dict[str, Any], where: Where) -> tuple[str, ...]:
    tags = item.get("tags", [])
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise where.at(_line(item, "tags")).error(
            f"tags must be a list of words, got {short(tags)}"
        )
    return tuple(tags)


def _choice(item: dict[str, Any], key: str, choices: Sequence[str], where: Where) -> str | None:
    if key not in item:
        return None
    try:
        return check_choice(item[key], choices, key)
    except KernelError as exc:
        raise where.at(_line(item, key)).error(exc) from None


def _kind_of(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list {short(value)}"
    return f"{type(value).__name__} {short(value)}"


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def dump(item: Kernel | Any) -> str:
    """YAML text for a kernel or bank that reads back as the same thing.

    Names that are specs (``gaussian:sigma=2``) become names (``gaussian-sigma-2``).

    >>> print(dump(Kernel("half", [[1, 1]], scale=0.5, output="clip")), end="")
    name: half
    matrix:
    - [1.0, 1.0]
    scale: 0.5
    output: clip
    """
    import yaml

    data = _dump_data(item)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


def _dump_data(item: Any) -> dict[str, Any]:
    # Family and inline names ("gaussian:sigma=2") are specs, not names: make them names.
    name = item.name
    if not NAME_RE.match(name):
        name = re.sub(r"[^A-Za-z0-9_.+@\-]+", "-", name).strip("-")
    data: dict[str, Any] = {"name": name if NAME_RE.match(name) else f"k-{name}"}
    if item.description:
        data["description"] = item.description
    if isinstance(item, Kernel):
        m = item.matrix
        rows = m.tolist() if m.ndim == 2 else [m[:, :, c].tolist() for c in range(m.shape[2])]
        data["matrix"] = rows
        if item.scale != 1:
            data["scale"] = item.scale
        if item.bias:
            data["bias"] = item.bias
        if item.anchor is not None:
            data["anchor"] = list(item.anchor)
    else:
        data["kernels"] = [_dump_data(k) for k in item.kernels]
        data["combine"] = item.combine
    if item.output:
        data["output"] = item.output
    if item.tags:
        data["tags"] = list(item.tags)
    return data
