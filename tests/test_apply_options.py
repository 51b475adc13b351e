"""imgconv apply's options at their edges: size limits, refused values, ignored options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgconv.cli import app
from imgconv.pipeline import Pipeline

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def one_pixel(tmp_path: Path) -> Path:
    path = tmp_path / "one.png"
    Image.new("L", (1, 1), 7).save(path)
    return path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(path)
    return path


# --- every stage's size is bounded by --max-pixels, from the formula, before computing -----

def test_padding_beyond_max_pixels_is_refused_up_front(one_pixel, tmp_path):
    out = tmp_path / "out.png"
    result = invoke("apply", one_pixel, "-k", "sobel", "--padding", "20000", "--max-pixels", "1",
                    "-o", out)
    assert result.exit_code == 2
    assert "would pad the image to 40001x40001" in result.output
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("--padding", "100000"), ("--dilation", "100000"),
                                           ("--padding", "2000000000,0")])
def test_huge_geometry_is_a_usage_error(small, tmp_path, option, value):
    result = invoke("apply", small, "-k", "sobel", option, value, "-o", tmp_path / "o.png")
    assert result.exit_code == 2, result.output
    assert "more than 4 x the limit of 100,000,000" in result.output
    assert "internal error" not in result.output


@pytest.mark.parametrize("option", ["--padding", "--stride", "--dilation", "--pool-size"])
def test_numbers_past_two_to_the_31_are_refused(small, tmp_path, option):
    extra = ["--pool", "max"] if option == "--pool-size" else []
    result = invoke("apply", small, "-k", "sobel", option, "9" * 30, *extra,
                    "-o", tmp_path / "o.png")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {option}")
    assert len(result.output.splitlines()) == 1


def test_a_stage_larger_than_max_pixels_fails_that_file_only(small, one_pixel, tmp_path):
    # 20x30 padded by 5 gives 28x38 = 1,064 pixels; the 1x1 image's 9x9 result is within 1,000
    result = invoke("apply", small, one_pixel, "-k", "sobel", "--padding", "5",
                    "--max-pixels", "1000", "--out-dir", tmp_path / "out")
    assert result.exit_code == 1
    assert "small.png: stage 1 (sobel) would make 28x38 = 1,064 pixels, more than the limit " \
           "of 1,000" in result.output
    assert (tmp_path / "out" / "one.png").exists()
    assert not (tmp_path / "out" / "small.png").exists()


def test_check_applies_the_same_limit(small):
    result = invoke("check", small, "-k", "sobel", "--padding", "5", "--max-pixels", "1000")
    assert result.exit_code == 1
    assert "would make 28x38" in result.output


def test_size_problem_follows_every_stage():
    pipeline = Pipeline.from_options(["box:3"], padding="valid", pool="max", pool_size="2")
    assert pipeline.size_problem((10, 10), 64) is None  # 8x8, then 4x4
    assert "stage 1 (box:3) would make 9x9" in str(pipeline.size_problem((11, 11), 64))
    # a pooled result far below the limit does not excuse a stage before it
    assert pipeline.size_problem((11, 11), 81) is None


# --- values that are refused ----------------------------------------------------------------

@pytest.mark.parametrize("tol", ["nan", "inf"])
@pytest.mark.parametrize("command", ["apply", "check"])
def test_tol_must_be_finite(small, tmp_path, tol, command):
    out = ["--verify", "-o", tmp_path / "o.png"] if command == "apply" else []
    result = invoke(command, small, "-k", "sobel", "--tol", tol, *out)
    assert result.exit_code == 2
    assert f"--tol must be a finite number >= 0, got {tol}" in result.output


def test_cval_must_fit_float32(small, tmp_path):
    result = invoke("apply", small, "-k", "sobel", "--pad-mode", "constant", "--cval", "1e308",
                    "-o", tmp_path / "o.png")
    assert result.exit_code == 2
    assert "--cval must be within float32's range" in result.output


def test_stdout_output_takes_the_input_format(small):
    result = runner.invoke(app, ["apply", str(small), "-k", "sobel", "-o", "-"])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.startswith(b"\x89PNG")


def test_stdout_output_from_stdin_still_needs_a_format(small):
    result = runner.invoke(app, ["apply", "-", "-k", "sobel", "-o", "-"],
                           input=small.read_bytes())
    assert result.exit_code == 2
    assert "needs --format" in result.output


def test_binary_output_to_a_terminal_is_refused(small, monkeypatch):
    from imgconv.cli import output as cli_common

    monkeypatch.setattr(cli_common.Stream, "file_is_terminal", lambda self: True)
    result = invoke("apply", small, "-k", "sobel", "-o", "-", "--format", "png")
    assert result.exit_code == 2
    assert "standard output is a terminal" in result.output


# --- options that would be ignored say so; --verify reports what it found --------------------

def test_tol_without_verify_is_noted(small, tmp_path):
    result = invoke("apply", small, "-k", "sobel", "--tol", "1", "-o", tmp_path / "o.png")
    assert result.exit_code == 0
    assert "note: --tol is used only with --verify" in result.output


def test_quality_for_lossless_outputs_is_noted(small, tmp_path):
    result = invoke("apply", small, "-k", "sobel", "--quality", "80", "-o", tmp_path / "o.png")
    assert result.exit_code == 0
    assert "note: --quality is used only for jpg and webp outputs, not png" in result.output
    result = invoke("apply", small, "-k", "sobel", "--quality", "80", "-o", tmp_path / "o.jpg")
    assert "--quality" not in result.output


def test_quiet_hides_the_notes(small, tmp_path):
    result = invoke("apply", small, "-k", "sobel", "--tol", "1", "-q", "-o", tmp_path / "o.png")
    assert result.output == ""


def test_a_successful_verify_reports_its_largest_error(small, tmp_path):
    result = invoke("apply", small, "-k", "gaussian:sigma=1.5", "--verify",
                    "-o", tmp_path / "o.png")
    assert result.exit_code == 0
    summary = result.output.splitlines()[-1]
    assert summary.startswith("written 1, skipped 0, failed 0; verified: largest |imgconv - "
                              "scipy| = ")
    assert float(summary.rsplit("= ", 1)[1]) < 1e-3


# --- the clipping note suggests only what fits the result's sign ----------------------------

@pytest.fixture
def noise(tmp_path: Path) -> Path:
    path = tmp_path / "noise.png"
    noise = np.random.default_rng(2).integers(0, 256, (24, 24), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    return path


@pytest.mark.parametrize("args, advice", [
    (["-k", "sobel-x", "--output-map", "clip"], "try --output-map abs or offset or normalize"),
    (["-k", "sobel", "--output-map", "clip"], "try --output-map normalize"),  # never negative
    (["-k", "sobel-x", "--activation", "relu"], "try --output-map normalize"),
    (["-k", "sobel-x", "--output-map", "abs"], "try --output-map normalize"),
    (["-k", "sharpen"], None),  # brightness kept: the halos are meant to clip
    (["-k", "sharpen", "-k", "sharpen"], None),
])
def test_clipping_advice_fits_the_kernel(noise, tmp_path, args, advice):
    result = invoke("apply", noise, *args, "-o", tmp_path / "o.png")
    assert result.exit_code == 0
    notes = [line for line in result.output.splitlines() if "clipped" in line]
    if advice is None:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].endswith(advice), notes


# --- --name: the extension it gives says the format, as -o's does --------------------------

def test_a_name_without_an_extension_is_refused(small, tmp_path):
    result = invoke("apply", small, "-k", "sobel", "--out-dir", tmp_path / "o", "--name", "{stem}")
    assert result.exit_code == 2
    assert "--name '{stem}' gives 'small', which does not end in an extension" in result.output
    assert not (tmp_path / "o").exists()


def test_the_name_extension_says_the_format(small, tmp_path):
    result = invoke("apply", small, "-k", "sobel", "--out-dir", tmp_path, "--name",
                    "{stem}-edges.jpg")
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "small-edges.jpg").format == "JPEG"


def test_a_name_and_format_that_disagree_are_refused(small, tmp_path):
    result = invoke("apply", small, "-k", "sobel", "--out-dir", tmp_path, "--name",
                    "{stem}.jpg", "--format", "png")
    assert result.exit_code == 2
    assert "the extension says jpg but --format says png" in result.output


def test_format_allows_a_name_without_an_extension(small, tmp_path):
    result = invoke("apply", small, "-k", "sobel", "--out-dir", tmp_path, "--name", "{stem}-x",
                    "--format", "png")
    assert result.exit_code == 0
    assert Image.open(tmp_path / "small-x").format == "PNG"


# --- warnings from the kernel library reach the terminal as warning: lines -----------------

def test_a_search_path_warning_is_one_line_with_one_input(small, tmp_path, monkeypatch):
    # one input is decoded ahead in a thread whose own warnings block must not swallow or
    # replace the command's: the warning is a warning: line, not a raw Python warning, and
    # never a note blamed on the input file
    import imgconv.kernels.library as library

    folder = tmp_path / "mine"
    folder.mkdir()
    monkeypatch.setenv("IMGCONV_KERNEL_PATH", str(folder))
    monkeypatch.setattr(library, "_FILE_CACHE", {})
    real = Path.iterdir

    def denied(self):
        if self.name == "mine":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    result = invoke("apply", small, "-k", "no-such-kernel-here", "-o", tmp_path / "o.png")
    lines = result.stderr.splitlines()
    assert f"warning: kernel folder '{folder}' cannot be read (Permission denied); skipped" \
        in lines
    assert not any("ImgconvWarning" in line or "small.png: kernel folder" in line
                   for line in lines)


def test_a_padding_past_two_to_the_31_says_so(small, tmp_path):
    result = invoke("apply", small, "-k", "sobel", "--padding", "3000000000", "-o",
                    tmp_path / "o.png")
    assert result.exit_code == 2
    assert "--padding takes numbers up to 2147483647" in result.output


def test_dry_run_says_a_fifo_output_would_fail(small, tmp_path):
    import os

    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    result = invoke("apply", small, "-k", "sobel", "-o", fifo, "--overwrite", "--dry-run")
    assert result.exit_code == 0
    assert "(would fail:" in result.output and "is a FIFO" in result.output


def test_npy_files_in_a_folder_are_not_taken_for_images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("L", (5, 4), 9).save(folder / "a.png")
    np.save(folder / "weights.npy", np.ones((3, 3)))
    result = invoke("apply", folder, "-k", "box:3", "--out-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
    # named, an array is read: every channel is pixels, float values 0..255 as Pillow's F
    named = invoke("apply", folder / "weights.npy", "-k", "box:3", "-o", tmp_path / "w.png")
    assert named.exit_code == 0, named.output
    assert np.asarray(Image.open(tmp_path / "w.png")).tolist() == [[1] * 3] * 3


def test_dry_run_of_npy_output_says_nothing_is_mapped(small, tmp_path):
    result = invoke("apply", small, "-k", "sobel-x", "-o", tmp_path / "o.npy", "--dry-run")
    assert result.exit_code == 0
    assert "output: the float values as computed" in result.output
    assert "--output-map" not in result.output.split("output: ")[-1].split("(")[0]
    png = invoke("apply", small, "-k", "sobel-x", "-o", tmp_path / "o.png", "--dry-run")
    assert "output: --output-map" in png.output
