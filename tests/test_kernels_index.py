"""The built-in kernels' JSON index: current, faithful, and never trusted when stale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from imgconv.kernels import index, library
from imgconv.kernels.parse import LineDict, LineList, load_yaml, parse_documents, parse_file

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "kernels"
NAMES = sorted(p.name for p in KERNELS.glob("*.yaml"))


def test_the_committed_index_is_that_of_the_yaml_files():
    expected = json.dumps(index.build(KERNELS, NAMES), indent=1, ensure_ascii=False) + "\n"
    assert (KERNELS / index.INDEX_NAME).read_text("utf-8") == expected, (
        "kernels/index.json is stale: run python -m imgconv.kernels.index")


def _same_with_lines(a, b):
    assert a == b and type(a) is type(b)
    if isinstance(a, LineDict):
        assert (a.line, a.lines) == (b.line, b.lines)
        for key in a:
            _same_with_lines(a[key], b[key])
    elif isinstance(a, LineList):
        assert (a.line, a.lines) == (b.line, b.lines)
        for x, y in zip(a, b, strict=True):
            _same_with_lines(x, y)


def test_documents_from_the_index_are_the_yaml_ones_with_their_lines():
    known = index.load(KERNELS)
    assert sorted(known) == NAMES
    for name in NAMES:
        text = (KERNELS / name).read_text("utf-8")
        from_index = index.documents(known, name, text)
        assert from_index is not None
        parsed = load_yaml(text, name)
        assert len(from_index) == len(parsed)
        for a, b in zip(from_index, parsed, strict=True):
            _same_with_lines(a, b)
        # and the entries built from them, to their error locations
        for a, b in zip(parse_documents(from_index, name, "built-in"),
                        parse_file(text, name, "built-in"), strict=True):
            assert (a.name, a.kind, a.where, a.members, a.family, a.params) == (
                b.name, b.kind, b.where, b.members, b.family, b.params)
            if a.kernel is not None:
                np.testing.assert_array_equal(a.kernel.weights, b.kernel.weights)


def test_a_file_that_differs_from_its_index_is_parsed(monkeypatch, tmp_path):
    # an edited built-in: its index entry is ignored and the YAML is read
    for name in NAMES:
        (tmp_path / name).write_text((KERNELS / name).read_text("utf-8"), "utf-8")
    (tmp_path / index.INDEX_NAME).write_text((KERNELS / index.INDEX_NAME).read_text("utf-8"))
    edited = tmp_path / "sobel-x.yaml"
    edited.write_text(edited.read_text("utf-8").replace("[-1, 0, 1]", "[-3, 0, 3]", 1))
    known = index.load(tmp_path)
    assert index.documents(known, edited.name, edited.read_text("utf-8")) is None
    monkeypatch.setattr(library, "builtin_dir", lambda: tmp_path)
    library._builtins.cache_clear()
    try:
        weights = library.resolve("sobel-x").weights
    finally:
        library._builtins.cache_clear()
    assert weights[0].tolist() == [-3.0, 0.0, 3.0]
    # a missing or broken index is no index
    (tmp_path / index.INDEX_NAME).write_text("{not json")
    assert index.load(tmp_path) == {}


def test_resolving_a_built_in_imports_no_yaml():
    code = ("import sys\nfrom imgconv.kernels import resolve\nresolve('sobel-x')\n"
            "resolve('gaussian:sigma=2')\nprint('yaml' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["False"]
