"""The installed package: doctests, the console script, start-up imports."""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import subprocess
import sys

import pytest

import imgconv

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(imgconv.__path__, "imgconv.")
    if not name.endswith("__main__")
)


@pytest.mark.parametrize("name", ["imgconv", *MODULES])
def test_doctests(name):
    module = importlib.import_module(name)
    failures, _ = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert failures == 0


def test_console_script_version(imgconv_script):
    result = subprocess.run([imgconv_script, "--version"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0
    assert result.stdout.strip() == f"imgconv {imgconv.__version__}"


def test_help_imports_no_heavy_modules():
    code = (
        "import sys\n"
        "from imgconv.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = sorted(m for m in ('numpy', 'scipy', 'PIL') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""


def test_the_prefetch_thread_needs_no_numpy():
    # it opens and decodes a file while the main thread imports numpy: its
    # modules (opening, notes) must not import numpy themselves
    code = ("import sys\nimport imgconv.prefetch, imgconv.opening, imgconv.notes\n"
            "print('numpy' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_main_leaves_the_garbage_collector_alone():
    # only the command (imgconv.__main__.script) freezes it on its way out
    code = ("import gc, sys\nfrom imgconv.cli import main\n"
            "sys.argv = ['imgconv', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(gc.get_freeze_count())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split()[-1] == "0"


def test_dir_lists_the_lazily_loaded_api():
    assert {"correlate", "convolve", "pool", "activate", "__version__"} <= set(dir(imgconv))


def _imports(path, module, package, modules):
    """The imgconv modules that ``module`` imports anywhere, functions included.

    ``from package import submodule`` is an edge to the submodule alone: the
    package's own ``__init__`` runs first whatever is imported, which is not a
    dependency of the importer's making.
    """
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            submodules = {f"{base}.{a.name}" for a in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):  # a name defined in base itself
                found.add(base)
    return (found & modules) - {module}


def test_no_import_cycles():
    from pathlib import Path

    root = Path(imgconv.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    modules = set(files)
    graph = {m: _imports(p, m, m if p.name == "__init__.py" else m.rpartition(".")[0], modules)
             for m, p in files.items()}
    cycles = set()

    def visit(module, path):
        for other in sorted(graph[module]):
            if other in path:
                cycle = path[path.index(other):]
                first = cycle.index(min(cycle))  # each cycle once, from its smallest module
                cycle = cycle[first:] + cycle[:first]
                cycles.add(" -> ".join([*cycle, cycle[0]]))
            elif other not in done:
                visit(other, [*path, other])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert sorted(cycles) == []


def test_no_flag_names_outside_the_cli():
    # the library names its parameters (`max_pixels`); only imgconv/cli/ knows the flags
    import re
    from pathlib import Path

    root = Path(imgconv.__file__).parent
    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
    found = [f"{path.relative_to(root)}:{n}: {line.strip()}"
             for path in sorted(root.rglob("*.py")) if "cli" not in path.relative_to(root).parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if flag.search(line)]
    assert found == []


@pytest.mark.parametrize("output", ["out.png", "out.tif"])
def test_apply_on_a_photo_imports_no_extra(tmp_path, output):
    # the scale extra (dask, distributed, zarr, imagecodecs) and the jit one (numba) load
    # only for what needs them: a tiled input, a cluster, the compiled path
    from PIL import Image

    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "in.jpg")
    code = (
        "import sys\n"
        "from imgconv.cli import main\n"
        f"sys.argv = ['imgconv', 'apply', {str(tmp_path / 'in.jpg')!r}, '-k', 'sobel', "
        f"'-o', {str(tmp_path / output)!r}, '-q']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "extras = ('dask', 'distributed', 'zarr', 'imagecodecs', 'numba')\n"
        "print(','.join(sorted(m for m in extras if m in sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGCONV_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env=env)
    assert result.stdout.strip() == ""
    assert (tmp_path / output).exists()
