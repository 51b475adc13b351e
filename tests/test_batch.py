"""imgconv.batch hardening: other paths to one file, symlink loops, locked folders, signals,
closed pipes, concurrent runs and names (issue 14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgconv import batch
from imgconv.cli import app

runner = CliRunner()


def invoke(*args: object, input: bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def small_png(path: Path, size: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


# --- manifest, concurrent runs, names, empty paths ------------------------------------------


@pytest.mark.parametrize(("a", "b"), [
    ("gaussian:sigma=1/3", "gaussian:sigma=2/3"),
    ("1/9 1/9 1/9", "2/9 2/9 2/9"),
    ("0 1 0; 1 -4 1; 0 1 0", "0 1 0;1 -4 1;0 1 0"),
])
def test_kernel_names_in_file_names_never_collide(tmp_path, a, b):
    x = small_png(tmp_path / "x.png")
    out = tmp_path / "out"
    for spec in (a, b):
        result = invoke("apply", x, "-k", spec, "--out-dir", out,
                        "--name", "{stem}-{kernel}{ext}")
        assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2, names
    assert all("/" not in n and " " not in n for n in names)


def test_file_safe_kernel_names():
    assert batch._file_safe("sobel-x") == "sobel-x"
    assert batch._file_safe("gaussian:sigma=2") == "gaussian_sigma=2"
    assert batch._file_safe("sobel+gaussian:sigma=2") == "sobel+gaussian_sigma=2"
    long_a, long_b = "box:size=3+" * 10 + "a", "box:size=3+" * 10 + "b"
    assert batch._file_safe(long_a) != batch._file_safe(long_b)
    assert len(batch._file_safe(long_a)) <= 60
    assert batch._file_safe("x_y") != batch._file_safe("x:y")
    assert batch._file_safe("1/3").startswith("1_3-")


