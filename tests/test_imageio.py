"""The Pillow boundary under odd inputs: special files, format limits, odd values and depths."""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgconv import imageio
from imgconv.cli import app
from imgconv.errors import ImageError

runner = CliRunner()


def invoke(*args: object, input: bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(autouse=True)
def no_hang():
    """A test that would block (opening a FIFO) fails after 10 s instead of hanging the run."""

    def stop(signum, frame):
        raise TimeoutError("blocked")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def gray_png(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).save(path)
    return path


def make_special(kind: str, path: Path) -> Path:
    """A file of ``kind`` at ``path``: fifo, chardev (a /dev/null of our own), socket, folder."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    elif kind == "folder":
        path.mkdir()
    return path


SPECIAL = ("fifo", "chardev", "socket", "folder")
WORDS = {"fifo": "FIFO", "chardev": "character device", "socket": "socket", "folder": "folder"}


@pytest.mark.parametrize("kind", SPECIAL)
def test_special_file_as_input_is_refused_without_blocking(tmp_path, kind):
    special = make_special(kind, tmp_path / "in.png")
    if kind != "folder":  # a folder given to apply is searched for images
        result = invoke("apply", special, "-k", "box-blur", "-o", tmp_path / "out.png")
        assert result.exit_code == 1, result.output
        assert f"{special}: is a {WORDS[kind]}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 2  # the error, then the summary
    with pytest.raises(ImageError, match=WORDS[kind]):
        imageio.load(str(special))


@pytest.mark.parametrize("kind", ["fifo", "chardev", "socket"])
def test_manifest_hash_refuses_a_special_input(tmp_path, kind):
    from imgconv.batch.job import _sha256

    special = make_special(kind, tmp_path / "in.png")
    with pytest.raises(ImageError, match=f"{special}: is a {WORDS[kind]}"):
        _sha256(str(special))


@pytest.mark.parametrize("kind", SPECIAL)
def test_special_file_as_output_is_never_replaced(tmp_path, gray_png, kind):
    special = make_special(kind, tmp_path / "out.png")
    before = os.lstat(special)
    if kind != "folder":  # -o FOLDER is a usage error of its own
        result = invoke("apply", gray_png, "-k", "box-blur", "-o", special, "--overwrite")
        assert result.exit_code == 1, result.output
        assert f"{special}: is a {WORDS[kind]}, not a regular file" in result.stderr
    with pytest.raises(ImageError, match=f"{special}: is a {WORDS[kind]}"):
        imageio.save(np.zeros((2, 2)), special, overwrite=True)
    after = os.lstat(special)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_link_to_a_regular_output_is_replaced_as_before(tmp_path, gray_png):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    link = tmp_path / "out.png"
    link.symlink_to(target)
    imageio.save(np.zeros((2, 2)), link, overwrite=True)
    assert not link.is_symlink() and Image.open(link).size == (2, 2)


def test_library_names_its_own_parameter(tmp_path):
    out = tmp_path / "x.png"
    imageio.save(np.zeros((2, 2)), out)
    with pytest.raises(ImageError,
                       match=r"already exists \(use `overwrite=True` to replace it\)") as info:
        imageio.save(np.zeros((2, 2)), out)
    assert "--overwrite" not in str(info.value)


def test_stdin_is_read_up_to_a_limit():
    with open("/dev/zero", "rb") as zero, pytest.raises(
            ImageError, match=r"^<stdin>: more than 1,000 bytes"):
        imageio.read_stdin(zero, 1000)
    import io

    assert imageio.read_stdin(io.BytesIO(b"x" * 1000), 1000) == b"x" * 1000
    assert imageio.stdin_limit(100_000_000) == 800_000_000 + 16 * 2**20


@pytest.mark.parametrize("command", ["apply", "check"])
def test_cli_refuses_an_endless_stdin(tmp_path, monkeypatch, command):
    monkeypatch.setattr(imageio, "STDIN_SLACK", 0)  # 8 bytes a pixel: 32 bytes for 4 pixels
    out = ["-o", tmp_path / "x.png"] if command == "apply" else []
    result = invoke(command, "-", "-k", "box-blur", *out, "--max-pixels", "4", input=bytes(100))
    assert result.exit_code == 1, result.output
    assert "<stdin>: more than 32 bytes" in result.stderr


@pytest.mark.parametrize(("fmt", "side", "words"), [
    ("webp", 16384, "WEBP, which holds at most 16,383"),
    ("jpg", 65501, "JPEG, which holds at most 65,500"),
])
def test_format_limits_are_checked_before_encoding(tmp_path, fmt, side, words):
    wide = tmp_path / "wide.png"  # one row: tiny, but wider than the format allows
    Image.new("L", (side, 1)).save(wide)
    out = tmp_path / f"out.{fmt}"
    result = invoke("apply", wide, "-k", "box-blur", "-o", out)
    assert result.exit_code == 1, result.output
    assert f"{out}: {side}x1 is too large for {words} pixels a side" in result.stderr
    assert "internal error" not in result.stderr and not out.exists()
    with pytest.raises(ImageError, match=f"{out}: {side}x1 is too large"):
        imageio.save(np.zeros((1, side)), out)
    Image.new("L", (side - 1, 1)).save(wide)  # one less fits
    assert invoke("apply", wide, "-k", "box-blur", "-o", out).exit_code == 0


def test_write_error_on_stdout_names_the_output(imgconv_script, gray_png):
    import subprocess

    with open("/dev/full", "wb") as full:
        proc = subprocess.run([imgconv_script, "apply", gray_png, "-k", "box-blur", "-o", "-",
                               "--format", "png"], stdout=full, stderr=subprocess.PIPE,
                              env={**os.environ,
                                   "PYTHONPATH": str(Path(imageio.__file__).parents[1])},
                              timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "<stdout>: cannot write (No space left on device)" in err, err
    assert err.splitlines()[0].endswith(": <stdout>: cannot write (No space left on device)")


def test_float_input_to_png_is_8_bit(tmp_path):
    src = tmp_path / "f.tiff"
    Image.fromarray(np.linspace(0, 255, 48, dtype=np.float32).reshape(6, 8)).save(src)
    assert Image.open(src).mode == "F"
    for name, mode in (("out.png", "L"), ("out.tiff", "F")):
        assert invoke("apply", src, "-k", "box-blur", "-o", tmp_path / name).exit_code == 0
        assert Image.open(tmp_path / name).mode == mode


@pytest.fixture
def nan_tiff(tmp_path: Path) -> Path:
    values = np.linspace(0, 255, 48, dtype=np.float32).reshape(6, 8)
    values[2, 3], values[4, 4] = np.nan, np.inf
    path = tmp_path / "nan.tiff"
    Image.fromarray(values).save(path)
    return path


@pytest.fixture
def corrupt_exif_jpg(tmp_path: Path) -> Path:
    import struct

    # one ASCII tag whose 100 bytes of data lie past the end of the EXIF block
    exif = (b"Exif\0\0II*\0" + struct.pack("<IH", 8, 1)
            + struct.pack("<HHII", 0x010E, 2, 100, 1000) + struct.pack("<I", 0))
    path = tmp_path / "exif.jpg"
    Image.new("RGB", (8, 6), (10, 20, 30)).save(path, exif=exif)
    return path


def run_quietly(*args: object):
    """invoke(), asserting that no Python warning escaped the tool."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke(*args)
    assert [str(w.message) for w in caught] == []
    return result


@pytest.mark.parametrize("how", ["clip", "abs", "normalize"])
def test_non_finite_pixels_are_noted_once_not_warned(tmp_path, nan_tiff, how):
    out = tmp_path / "out.png"
    result = run_quietly("apply", nan_tiff, "-k", "sobel", "--output-map", how, "-o", out)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert f"warning: {nan_tiff}: 2 non-finite pixels (NaN/inf)" in warnings
    assert len(warnings) == len(set(warnings))
    assert "RuntimeWarning" not in result.stderr and ".py:" not in result.stderr
    quiet = run_quietly("apply", nan_tiff, "-k", "sobel", "--output-map", how, "-o", out,
                        "--overwrite", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert imageio.load(str(nan_tiff)).notes == [f"{nan_tiff}: 2 non-finite pixels (NaN/inf)"]


def test_normalize_ignores_non_finite_values(tmp_path, nan_tiff):
    out = tmp_path / "out.png"
    result = run_quietly("apply", nan_tiff, "-k", "box-blur", "--output-map", "normalize",
                         "-o", out)
    assert result.exit_code == 0, result.output
    assert "NaN written as 0" in result.stderr
    written = np.asarray(Image.open(out))
    assert written.max() == 255 and written[0, 0] == 0  # stretched over the finite values
    assert written[2, 3] == 0  # NaN spread by the blur: 0
    from imgconv.pipeline import map_output

    with pytest.warns(RuntimeWarning, match="2 non-finite values"):
        mapped, _ = map_output(np.array([np.nan, 10.0, 20.0, np.inf]), "normalize",
                               scale=1.0, out_max=255)
    assert mapped.tolist() == [0, 0, 255, 255]


def test_corrupt_exif_is_a_note(tmp_path, corrupt_exif_jpg):
    result = run_quietly("apply", corrupt_exif_jpg, "-k", "box-blur", "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.output
    assert f"warning: {corrupt_exif_jpg}: Tag data larger than file" in result.stderr
    picture = imageio.load(str(corrupt_exif_jpg))
    assert any("Tag data larger than file" in n for n in picture.notes)


def exif_of(path: Path) -> dict[int, object]:
    return dict(Image.open(path).getexif())


@pytest.mark.parametrize("orientation", [1, 6])
def test_jpeg_output_keeps_exif_upright_and_the_input_quality(tmp_path, orientation):
    src = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "Camera maker", orientation
    pixels = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src, quality=97, exif=exif.tobytes())
    out = tmp_path / "out.jpg"
    assert invoke("apply", src, "-k", "box-blur", "-o", out).exit_code == 0
    kept = exif_of(out)
    assert kept[0x010F] == "Camera maker" and kept.get(0x0112, 1) == 1
    assert Image.open(out).size == ((16, 24) if orientation == 6 else (24, 16))
    assert Image.open(out).quantization == Image.open(src).quantization
    assert invoke("apply", src, "-k", "box-blur", "-o", out, "--overwrite",
                  "--quality", "50").exit_code == 0
    assert Image.open(out).quantization != Image.open(src).quantization
    png = tmp_path / "out.png"
    assert invoke("apply", src, "-k", "box-blur", "-o", png).exit_code == 0
    assert exif_of(png)[0x010F] == "Camera maker"


def test_jpeg_output_of_other_input_is_quality_90(tmp_path, gray_png):
    out, reference = tmp_path / "out.jpg", tmp_path / "ref.jpg"
    assert invoke("apply", gray_png, "-k", "box-blur", "-o", out).exit_code == 0
    Image.open(gray_png).save(reference, quality=90)
    assert Image.open(out).quantization == Image.open(reference).quantization


def rgb16(height: int = 6, width: int = 8, channels: int = 3) -> np.ndarray:
    """16-bit colour whose low bytes matter: no value is a multiple of 257."""
    values = np.arange(height * width * channels, dtype=np.uint16).reshape(height, width, -1)
    return values * 331 + 7


def write_png16(path: Path, values: np.ndarray) -> Path:
    import png

    height, width, channels = values.shape
    with open(path, "wb") as stream:
        png.Writer(width, height, greyscale=False, alpha=channels == 4, bitdepth=16).write(
            stream, values.reshape(height, -1).tolist())
    return path


@pytest.mark.parametrize("fmt", ["png", "tiff"])
@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_colour_is_read_and_written_at_full_depth(tmp_path, fmt, channels):
    import tifffile

    values = rgb16(channels=channels)
    src = tmp_path / f"in.{fmt}"
    if fmt == "png":
        write_png16(src, values)
    else:
        tifffile.imwrite(src, values, photometric="rgb",
                         extrasamples=["unassalpha"] if channels == 4 else None)
    picture = imageio.load(str(src))
    assert picture.depth == "16" and picture.pixels.dtype == np.uint16
    assert np.array_equal(picture.pixels, values[:, :, :3])
    if channels == 4:
        assert np.array_equal(picture.alpha, values[:, :, 3])
    for out_fmt in ("png", "tiff"):
        out = tmp_path / f"out.{out_fmt}"
        result = invoke("apply", src, "-k", "identity", "-o", out, "--alpha", "copy")
        assert result.exit_code == 0, result.output
        assert "warning" not in result.stderr
        again = imageio.load(str(out))
        assert np.array_equal(again.pixels, values[:, :, :3])
        if channels == 4:
            assert np.array_equal(again.alpha, values[:, :, 3])
        out.unlink()


def test_gray_depth_16_comes_from_16_bit_data(tmp_path):
    src = write_png16(tmp_path / "in.png", rgb16())
    out = tmp_path / "gray.png"
    assert invoke("apply", src, "-k", "identity", "--gray", "--depth", "16", "-o",
                  out).exit_code == 0
    written = np.asarray(Image.open(out)).astype(np.int64)
    expected = np.rint(rgb16().astype(np.float64) @ [0.299, 0.587, 0.114])
    assert np.abs(written - expected).max() <= 1
    assert np.count_nonzero(written % 257) > 0  # not 8-bit values stretched


def test_16_bit_colour_that_cannot_be_read_is_narrowed_with_a_note(tmp_path, monkeypatch):
    src = write_png16(tmp_path / "in.png", rgb16())

    def fail(*args, **kwargs):
        raise ValueError("no reader")

    monkeypatch.setattr(imageio, "_decode_wide", fail)
    picture = imageio.load(str(src))
    assert picture.depth == "8"
    assert picture.notes == [f"{src}: 16-bit colour read as 8-bit (ValueError: no reader)"]
