"""The built-in kernel files, read once into JSON: resolving ``sobel`` reads no YAML.

``kernels/index.json`` holds, for each built-in YAML file, its text and its
YAML documents with their line numbers. :func:`documents` gives a file's
documents from the index when its text there is the file's text, byte for
byte, and None otherwise (the caller then parses the file: an edited
built-in is never read stale). A test checks the committed index is that of
the files; after editing a built-in kernel, regenerate it with::

    python -m imgconv.kernels.index

PyYAML's import (15 ms) and the parse of every built-in file (5 ms) were a
tenth of a one-image ``imgconv apply`` (0.2 s).
"""

from __future__ import annotations

import json
import sys
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from imgconv.kernels.parse import LineDict, LineList, load_yaml

INDEX_NAME = "index.json"


def _encode(value: Any) -> Any:
    """A YAML value as JSON, keeping the lines :class:`LineDict` and :class:`LineList` hold."""
    if isinstance(value, LineDict):
        return {"map": [[k, _encode(v), value.lines[k]] for k, v in value.items()],
                "line": value.line}
    if isinstance(value, LineList):
        return {"seq": [[_encode(v), line] for v, line in zip(value, value.lines, strict=True)],
                "line": value.line}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "map" in value:
            mapping = LineDict()
            mapping.line, mapping.lines = value["line"], {}
            for key, item, line in value["map"]:
                mapping[key] = _decode(item)
                mapping.lines[key] = line
            return mapping
        seq = LineList(_decode(item) for item, _ in value["seq"])
        seq.line, seq.lines = value["line"], [line for _, line in value["seq"]]
        return seq
    return value


def build(root: Traversable, names: list[str]) -> dict[str, Any]:
    """The index of the YAML files ``names`` in ``root``."""
    files = {}
    for name in names:
        text = (root / name).read_text("utf-8")
        docs = load_yaml(text, name)
        files[name] = {"text": text, "documents": [_encode(d) for d in docs]}
    return {"files": files}


def load(root: Traversable) -> dict[str, Any]:
    """The index in ``root`` (empty when there is none or it cannot be read)."""
    try:
        index = json.loads((root / INDEX_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    files = index.get("files") if isinstance(index, dict) else None
    return files if isinstance(files, dict) else {}


def documents(index: dict[str, Any], name: str, text: str) -> list[Any] | None:
    """File ``name``'s YAML documents from ``index`` if its text there is ``text``."""
    entry = index.get(name)
    if not isinstance(entry, dict) or entry.get("text") != text:
        return None
    return [_decode(d) for d in entry["documents"]]


def main() -> int:
    """Rewrite the checkout's ``kernels/index.json`` from its YAML files."""
    root = Path(__file__).resolve().parents[2] / "kernels"
    from imgconv.kernels.parse import YAML_SUFFIXES

    names = sorted(p.name for p in root.iterdir() if p.name.endswith(YAML_SUFFIXES))
    text = json.dumps(build(root, names), indent=1, ensure_ascii=False) + "\n"
    (root / INDEX_NAME).write_text(text, "utf-8")
    print(f"wrote {root / INDEX_NAME} ({len(names)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
