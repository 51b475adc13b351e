"""The installed package: doctests, the console script, start-up imports."""

from __future__ import annotations

import doctest
import importlib
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
