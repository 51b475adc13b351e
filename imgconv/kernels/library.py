"""Where kernels come from: the search path, kernel files, and :func:`resolve`.

First match wins: each folder in ``IMGCONV_KERNEL_PATH`` (os.pathsep-separated),
then ``$XDG_CONFIG_HOME/imgconv/kernels`` (default ``~/.config/imgconv/kernels``),
then the built-ins shipped inside the package.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from imgconv.errors import ImgconvWarning, KernelError
from imgconv.kernels import families
from imgconv.kernels.model import Kernel, KernelBank, rotate_matrix, suggest
from imgconv.kernels.parse import (
    YAML_SUFFIXES,
    Entry,
    Refused,
    Where,
    load_yaml,
    parse_documents,
    parse_entry,
    parse_file,
    parse_matrix,
    read_text,
)
from imgconv.kernels.text import INLINE_CHARS, short
from imgconv.kernels.weights import is_weights_file, load_weights

BUILTIN = "built-in"
_FILE_SPEC = re.compile(r"^(.+\.ya?ml)(?::([^:/\\]+))?$", re.IGNORECASE)
# A file spec with something after FILE.yaml: that is not one NAME.
_BAD_FILE_SPEC = re.compile(r"^(.+\.ya?ml):(.*)$", re.IGNORECASE)


def builtin_dir() -> Traversable:
    """The built-in kernel folder: ``imgconv/data/kernels`` in an installed wheel,
    the checkout's top-level ``kernels/`` in an editable install."""
    data = resources.files("imgconv") / "data" / "kernels"
    if data.is_dir():
        return data
    return Path(__file__).resolve().parents[2] / "kernels"


def search_path() -> list[Path]:
    """The user folders searched before the built-ins, in order (missing ones included).

    >>> search_path()[-1].parts[-2:]
    ('imgconv', 'kernels')
    """
    env = os.environ.get("IMGCONV_KERNEL_PATH", "")
    folders = [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    folders.append(Path(config).expanduser() / "imgconv" / "kernels")
    return folders


@dataclass(frozen=True)
class Folder:
    """One folder of the search path: its label (``built-in`` or its path) and entries."""

    label: str
    entries: dict[str, Entry]
    files: dict[str, dict[str, Entry]]


def _folder(label: str, parsed: list[tuple[str, list[Entry]]]) -> Folder:
    entries: dict[str, Entry] = {}
    files: dict[str, dict[str, Entry]] = {}
    for file, file_entries in parsed:
        files[file] = {e.name: e for e in file_entries}
        for e in file_entries:
            if e.name in entries:
                raise e.where.error(
                    f"{short(e.name)} is also defined in {entries[e.name].where.file}"
                )
            entries[e.name] = e
    return Folder(label, entries, files)


@lru_cache(maxsize=1)
def _builtins() -> Folder:
    from imgconv.kernels import index

    root = builtin_dir()
    known = index.load(root)
    parsed = []
    for item in sorted(root.iterdir(), key=lambda t: t.name):
        if item.name.endswith(YAML_SUFFIXES):
            stem = item.name.rsplit(".", 1)[0]
            file = f"{BUILTIN} kernels/{item.name}"
            text = item.read_text("utf-8")
            docs = index.documents(known, item.name, text)
            parsed.append((file, parse_file(text, file, BUILTIN, stem) if docs is None
                           else parse_documents(docs, file, BUILTIN, stem)))
    return _folder(BUILTIN, parsed)


_FILE_CACHE: dict[tuple[str, int, int], list[Entry]] = {}


def read_file(path: Path) -> list[Entry]:
    """The entries of one kernel file (cached while the file is unchanged)."""
    label = str(path)
    try:
        stat = path.stat()
        key = (label, stat.st_mtime_ns, stat.st_size)
        if key in _FILE_CACHE:
            return _FILE_CACHE[key]
        text = read_text(path)
    except Refused as exc:
        raise KernelError(f"kernel file {label!r} {exc}") from None
    except FileNotFoundError:
        raise KernelError(f"kernel file {label!r} not found") from None
    except IsADirectoryError:
        raise KernelError(f"kernel file {label!r} is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise KernelError(f"{label}: not valid YAML: the file is not UTF-8 text") from None
    except OSError as exc:
        raise _Unreadable(f"kernel file {label!r} cannot be read: {exc.strerror}") from None
    entries = parse_file(text, label, label, path.stem)
    _FILE_CACHE[key] = entries
    return entries


class _Unreadable(KernelError):
    """A kernel file that cannot be opened or read (permissions, I/O): in a folder of the
    search path it is skipped with a warning, not an error."""


def _warn(message: str) -> None:
    warnings.warn(message, ImgconvWarning, stacklevel=3)


def _user_folder(folder: Path) -> Folder | None:
    # One unreadable folder or file on the search path must not break the others and
    # the built-ins: it is skipped, with a warning.
    try:
        if not folder.is_dir():
            return None
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in YAML_SUFFIXES)
        files = [p for p in files if p.is_file()]
    except OSError as exc:
        _warn(f"kernel folder {str(folder)!r} cannot be read ({exc.strerror}); skipped")
        return None
    parsed = []
    for p in files:
        try:
            parsed.append((str(p), read_file(p)))
        except _Unreadable as exc:
            _warn(f"{exc}; skipped")
    return _folder(str(folder), parsed)


def folders() -> list[Folder]:
    """The search path's folders that exist, then the built-ins."""
    found = [f for f in map(_user_folder, search_path()) if f is not None]
    return [*found, _builtins()]


class _Resolver:
    """Resolves specs against one snapshot of the search path."""

    def __init__(self) -> None:
        self.folders = folders()
        # The banks being built, outermost first, as (file, name): a bank met again
        # while building its own members refers to itself (directly or through files).
        self.building: list[tuple[str, str]] = []

    def names(self) -> list[str]:
        names = {n for f in self.folders for n in f.entries}
        return sorted(names | set(families.FAMILIES))

    def lookup(self, name: str, scope: dict[str, Entry] | None = None) -> Entry | None:
        if scope and name in scope:
            return scope[name]
        for folder in self.folders:
            if name in folder.entries:
                return folder.entries[name]
        return None

    def scope_of(self, entry: Entry) -> dict[str, Entry]:
        for folder in self.folders:
            if entry.where.file in folder.files:
                return folder.files[entry.where.file]
        return {}

    def resolve(self, spec: str, scope: dict[str, Entry] | None = None) -> Kernel | KernelBank:
        if not isinstance(spec, str) or not spec.strip():
            raise KernelError(
                f"a kernel spec must be a name, family, matrix or file; got {short(spec)}"
            )
        spec = spec.strip()
        if is_weights_file(spec):
            return load_weights(spec)
        file_spec = _FILE_SPEC.match(spec)
        if file_spec:
            return self.from_file(Path(file_spec[1]), file_spec[2])
        bad_file_spec = _BAD_FILE_SPEC.match(spec)
        if bad_file_spec:
            rest = bad_file_spec[2]
            problem = (
                f"has too many ':' parts ({short(rest)} after the file)" if ":" in rest
                else "names no kernel after the ':'" if not rest
                else f"{short(rest)} is not a kernel name"
            )
            raise KernelError(
                f"{short(spec)} {problem}; a kernel in a file is FILE.yaml:NAME "
                f"(or FILE.yaml alone for a file with one kernel)"
            )
        if spec.startswith("[") or re.search(r"[;\s]", spec) or (
            INLINE_CHARS.match(spec) and re.search(r"\d", spec)
        ):
            return inline(spec)
        name, colon, params = spec.partition(":")
        entry = self.lookup(name, scope)
        if entry is None or (colon and "@" in params):
            member = self.bank_member(spec)
            if member is not None:
                return member
        if entry is None:
            if name in families.FAMILIES:
                return families.make(name, params)
            raise KernelError(
                f"unknown kernel {short(name)}{suggest(name, self.names())}; "
                f"`imgconv list` shows them all"
            )
        if colon and entry.kind != "family":
            raise KernelError(
                f"{short(spec)}: {short(name)} is a {entry.kind.replace('family-', '')} "
                f"({entry.where.file}), not a family, so it takes no parameters; "
                f"families: {', '.join(families.FAMILIES)}"
            )
        return self.build(entry, params)

    def bank_member(self, spec: str) -> Kernel | None:
        """The member named ``spec`` of a bank on the search path (``kirsch-n``, or
        ``kirsch-n@45`` of a rotated bank): every name ``imgconv show`` prints resolves."""
        for folder in self.folders:
            for entry in folder.entries.values():
                if entry.kind != "bank" or (_file_key(entry.where.file), entry.name) in \
                        self.building:
                    continue
                try:
                    bank = self.build(entry)
                except KernelError:  # a broken bank is reported when it is asked for
                    continue
                assert isinstance(bank, KernelBank)
                for kernel in bank.kernels:
                    if kernel.name == spec:
                        return kernel
        return None

    def from_file(self, path: Path, member: str | None) -> Kernel | KernelBank:
        entries = {e.name: e for e in read_file(path)}
        if member is None:
            if len(entries) > 1:
                raise KernelError(
                    f"{path} holds {len(entries)} kernels ({', '.join(entries)}): "
                    f"name one, as {path}:NAME"
                )
            return self.build(next(iter(entries.values())), "", entries)
        if member not in entries:
            raise KernelError(
                f"{path} has no kernel {short(member)}{suggest(member, entries)}; "
                f"it holds {', '.join(entries)}"
            )
        return self.build(entries[member], "", entries)

    def build(self, entry: Entry, params: str = "",
              scope: dict[str, Entry] | None = None) -> Kernel | KernelBank:
        if entry.kind == "kernel":
            assert entry.kernel is not None
            return entry.kernel
        if entry.kind == "bank":
            key = (_file_key(entry.where.file), entry.name)
            if key in self.building:
                cycle = [*self.building[self.building.index(key):], key]
                raise KernelError(
                    "a bank that refers to itself: "
                    + " -> ".join(f"{_file_label(f)}:{n}" for f, n in cycle)
                )
            self.building.append(key)
            try:
                return self.bank(entry, scope if scope is not None else self.scope_of(entry))
            finally:
                self.building.pop()
        source = "family" if entry.source == BUILTIN else entry.source
        if entry.kind == "family":
            kernel = families.make(entry.family, params, source=source)
            if entry.name != entry.family:
                kernel = dataclasses.replace(kernel, name=f"{entry.name}:{params}".rstrip(":"))
            return kernel
        try:
            kernel = families.make(entry.family, entry.params or "", name=entry.name,
                                   source=source)
        except KernelError as exc:
            raise (entry.params_where or entry.where).error(exc) from None
        return dataclasses.replace(
            kernel,
            output=entry.output or kernel.output,
            description=entry.description or kernel.description,
            tags=entry.tags or kernel.tags,
        )

    def bank(self, entry: Entry, scope: dict[str, Entry]) -> KernelBank:
        members: list[Kernel] = []
        for i, (member, line) in enumerate(entry.members, 1):
            at = entry.where.at(line)
            if isinstance(member, dict):
                sub = parse_entry(member, Where(entry.where.file), entry.source,
                                  f"{entry.name}.{i}")
                if sub.kind == "bank":
                    raise sub.where.error("a bank member cannot be a bank; banks cannot nest")
                item = self.build(sub, scope=scope)
            else:
                member = str(member)
                found = self.lookup(member.strip().partition(":")[0], scope)
                if found is entry:
                    raise at.error(f"bank member {short(member)} refers to the bank itself")
                if found is not None and found.kind == "bank":
                    raise at.error(f"bank member {short(member)} is a bank; banks cannot nest")
                try:
                    item = self.resolve(member, scope)
                except KernelError as exc:
                    raise at.error(f"bank member {short(member)}: {exc}") from None
            if isinstance(item, KernelBank):
                raise at.error(f"bank member {short(member)} is a bank; banks cannot nest")
            members.append(item)
        if entry.rotate:
            members = [rot for k in members for rot in _rotations(k, entry.rotate, entry.where)]
        try:
            return KernelBank(
                name=entry.name,
                kernels=tuple(members),
                combine=entry.combine,
                output=entry.output,
                description=entry.description,
                tags=entry.tags,
                source=entry.source,
            )
        except KernelError as exc:
            raise entry.where.error(exc) from None


def _file_key(file: str) -> str:
    """``file`` as one spelling (``self.yaml`` and ``/abs/self.yaml`` are the same)."""
    if file.startswith(BUILTIN):
        return file
    return os.path.realpath(file)


def _file_label(key: str) -> str:
    """A file key as short as it reads well: relative to the working folder when inside it."""
    if key.startswith(BUILTIN):
        return key
    try:
        return os.path.relpath(key)
    except ValueError:  # another drive on Windows
        return key


def _rotations(kernel: Kernel, step: int, where: Where) -> list[Kernel]:
    if kernel.anchor not in (None, (kernel.shape[0] // 2, kernel.shape[1] // 2)):
        raise where.error(f"cannot rotate {short(kernel.name)}: it has an off-centre anchor")
    out = [kernel]
    for degrees in range(step, 360, step):
        try:
            matrix = rotate_matrix(kernel.matrix, degrees)
        except KernelError as exc:
            raise where.error(f"cannot rotate {short(kernel.name)}: {exc}") from None
        out.append(dataclasses.replace(kernel, name=f"{kernel.name}@{degrees}", matrix=matrix))
    return out


def inline(spec: str) -> Kernel:
    """A kernel typed on the command line: ``"0 1 0; 1 -4 1; 0 1 0"`` or ``"[[1, 2], [3, 4]]"``.

    >>> inline("1/9 1/9 1/9").weights.shape
    (1, 3)
    """
    where = Where(f"inline kernel {short(spec)}", lines=False)
    value: object = spec
    if spec.startswith("["):
        docs = load_yaml(spec, where.file)
        value = docs[0] if docs else []
    return Kernel(name=spec, matrix=parse_matrix(value, where), source="inline")


def from_mapping(item: object, name: str) -> Kernel | KernelBank:
    """A kernel, bank or family member given as a mapping, as a bank's ``kernels:`` takes
    them: ``{matrix: [[0, 1, 0], [1, -4, 1], [0, 1, 0]]}``; ``name`` when it has none.

    Errors name the mapping's line, not a file (the caller knows which file it is).

    >>> from_mapping({"matrix": "1 2 1", "scale": "1/4"}, "blur").weights.tolist()
    [[0.25, 0.5, 0.25]]
    """
    return _Resolver().build(parse_entry(item, Where(""), "inline", name), scope={})


def resolve(spec: str) -> Kernel | KernelBank:
    """Turn a kernel spec into a :class:`Kernel` or :class:`KernelBank`.

    A spec is a name on the search path (``sobel-x``), a family with parameters
    (``gaussian:sigma=2``, ``box:3x5``), an inline matrix (``"0 1 0; 1 -4 1; 0 1 0"``),
    a YAML file (``my.yaml``) or one kernel in it (``my.yaml:name``), or weights saved
    with ``numpy.save`` (``layer1.npy``: :mod:`imgconv.kernels.weights`).

    Raises :class:`~imgconv.errors.KernelError` with a one-line message.

    Examples
    --------
    >>> resolve("sobel-x").weights.tolist()
    [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
    >>> bank = resolve("sobel")
    >>> bank.combine, [k.name for k in bank.kernels]
    ('magnitude', ['sobel-x', 'sobel-y'])
    >>> resolve("box:2x3").weights.round(4).tolist()
    [[0.1667, 0.1667, 0.1667], [0.1667, 0.1667, 0.1667]]
    >>> resolve("sobl")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    imgconv.errors.KernelError: unknown kernel 'sobl' (did you mean sobel, sobel-x or sobel-y?); ...
    """
    return _Resolver().resolve(spec)


@dataclass(frozen=True)
class CatalogEntry:
    """One row of ``imgconv list``."""

    name: str
    kind: str
    shape: tuple[int, ...] | None
    source: str
    description: str
    tags: tuple[str, ...]
    shadows: tuple[str, ...] = ()
    members: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape) if self.shape else None,
            "source": self.source,
            "description": self.description,
            "tags": list(self.tags),
            "shadows": list(self.shadows),
            "members": list(self.members),
        }


def catalog(tag: str | None = None) -> list[CatalogEntry]:
    """Every kernel, bank and family the search path offers, sorted by name.

    A name defined in several folders appears once, from the first folder; the
    others are listed in ``shadows``.

    >>> [e.name for e in catalog("compass")]
    ['kirsch']
    """
    resolver = _Resolver()
    rows: dict[str, CatalogEntry] = {}
    for folder in resolver.folders:
        for entry in folder.entries.values():
            if entry.name in rows:
                rows[entry.name] = dataclasses.replace(
                    rows[entry.name], shadows=(*rows[entry.name].shadows, folder.label)
                )
                continue
            rows[entry.name] = _row(resolver, entry, folder.label)
    for name, fam in families.FAMILIES.items():
        if name not in rows:
            rows[name] = CatalogEntry(name, "family", None, BUILTIN, fam.description, fam.tags)
    out = sorted(rows.values(), key=lambda r: r.name)
    return [r for r in out if tag is None or tag in r.tags]


def _row(resolver: _Resolver, entry: Entry, label: str) -> CatalogEntry:
    if entry.kind == "family":
        fam = families.FAMILIES[entry.family]
        return CatalogEntry(entry.name, "family", None, label,
                            entry.description or fam.description, entry.tags or fam.tags)
    item = resolver.build(entry)
    members = tuple(k.name for k in item.kernels) if isinstance(item, KernelBank) else ()
    return CatalogEntry(
        entry.name,
        "bank" if members else "kernel",
        item.shape,
        label,
        item.description,
        item.tags,
        members=members,
    )
