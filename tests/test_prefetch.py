"""Decoding the one input ahead: the same pixels, the same errors, never a stale file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgconv import batch, opening
from imgconv.cli import app
from imgconv.errors import ImageError
from imgconv.imageio import load
from imgconv.pipeline import Pipeline
from imgconv.prefetch import Prefetch


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    pixels = np.random.default_rng(5).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_take_gives_the_loaded_picture_once(photo):
    prefetch = Prefetch(str(photo), 10_000)
    assert prefetch.take(str(photo), 9_999) is None  # another limit: not this one
    assert prefetch.take(str(photo) + "x", 10_000) is None  # another path
    assert prefetch.take(str(photo), 10_000, gray=True) is None  # another conversion
    picture = prefetch.take(str(photo), 10_000)
    assert picture is not None
    assert prefetch.take(str(photo), 10_000) is None  # given once
    expected = load(str(photo), max_pixels=10_000)
    assert np.array_equal(picture.pixels, expected.pixels)
    assert picture.pixels.dtype == expected.pixels.dtype == np.uint8


def test_gray_is_loaded_ahead_too(photo):
    picture = Prefetch(str(photo), 10_000, gray=True).take(str(photo), 10_000, gray=True)
    assert picture is not None and picture.pixels.shape == (40, 60)


def test_a_file_changed_after_decoding_is_read_again(photo):
    prefetch = Prefetch(str(photo), 10_000)
    prefetch.thread.join()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(photo)
    os.utime(photo, ns=(0, 123_456_789))  # a different mtime even on a coarse clock
    assert prefetch.take(str(photo), 10_000) is None


def _process(path: Path, prefetch: Prefetch, max_pixels: int) -> batch.Result:
    pipeline = Pipeline.from_options(["box-blur"])
    task = batch.Task(batch.Source(str(path)), str(path) + ".out.png", "png")
    return batch.process(task, batch.Options(pipeline, max_pixels=max_pixels), prefetch=prefetch)


def test_errors_are_those_of_opening_it(tmp_path, photo):
    result = _process(photo, Prefetch(str(photo), 100), 100)
    assert "2,400 pixels is more than the limit of 100" in result.reason
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = _process(broken, Prefetch(str(broken), 10_000), 10_000)
    assert "broken.jpg: not a readable image" in result.reason


def test_apply_decodes_its_one_input_ahead(tmp_path, photo, monkeypatch):
    taken = []
    real_take = Prefetch.take

    def spy(self, source, max_pixels, gray=False):
        taken.append(real_take(self, source, max_pixels, gray))
        return taken[-1]

    monkeypatch.setattr(Prefetch, "take", spy)
    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, ["apply", str(photo), "-k", "box-blur", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(taken) == 1 and taken[0] is not None
    assert out.exists()


@pytest.mark.parametrize("fmt", ["png", "jpg", "gif", "tiff", "webp", "bmp"])
def test_decoding_ahead_in_large_blocks_gives_the_same_picture(tmp_path, fmt):
    pixels = np.random.default_rng(8).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    path = tmp_path / f"photo.{fmt}"
    Image.fromarray(pixels).save(path)
    ahead = Prefetch(str(path), 10**6).take(str(path), 10**6)
    assert ahead is not None
    plain = load(str(path), max_pixels=10**6)
    assert np.array_equal(ahead.pixels, plain.pixels) and ahead.notes == plain.notes


def _decoded_by_pillow(path: Path, gray: bool = False) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("L") if gray and im.mode != "L" else im
        return np.asarray(im)


@pytest.mark.parametrize(("shape", "options"), [
    ((31, 17, 3), {}),
    ((31, 17, 3), {"progressive": True}),
    ((64, 48, 3), {"subsampling": 0, "quality": 95}),
    ((1, 1, 3), {}),
    ((23, 9), {}),  # grey
])
def test_jpeg_is_decoded_into_our_own_buffer(tmp_path, shape, options):
    path = tmp_path / "photo.jpg"
    pixels = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path, **options)
    with Image.open(path) as im:
        buffer = opening.decode_into_buffer(im)
    assert buffer is not None
    picture = load(str(path))
    expected = _decoded_by_pillow(path)
    assert picture.pixels.dtype == np.uint8 and picture.pixels.shape == expected.shape
    np.testing.assert_array_equal(picture.pixels, expected)
    # no copy: the pixels are a view of the memory the decoder wrote
    assert not picture.pixels.flags.owndata
    assert picture.mode == ("L" if expected.ndim == 2 else "RGB")


def test_what_is_not_a_plain_jpeg_takes_the_usual_path(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # to be turned 90 degrees clockwise
    Image.fromarray(rgb).save(turned, exif=exif)
    png = tmp_path / "photo.png"
    Image.fromarray(rgb).save(png)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk)
    for path, gray in ((turned, False), (png, False), (cmyk, False), (turned, True)):
        with Image.open(path) as im:
            assert opening.decode_into_buffer(im, gray) is None, path
    assert load(str(turned)).pixels.shape == (30, 20, 3)  # turned upright, as before
    # an RGB JPEG asked for in grey is converted by Pillow, as before
    plain = tmp_path / "plain.jpg"
    Image.fromarray(rgb).save(plain)
    with Image.open(plain) as im:
        assert opening.decode_into_buffer(im, gray=True) is None
    np.testing.assert_array_equal(load(str(plain), gray=True).pixels,
                                  _decoded_by_pillow(plain, gray=True))


def test_a_truncated_jpeg_is_still_an_error(tmp_path):
    path = tmp_path / "cut.jpg"
    noise = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageError, match=r"cut\.jpg: cannot decode the image"):
        load(str(path))


def test_a_pillow_that_decodes_into_its_own_image_takes_the_usual_path(tmp_path, monkeypatch):
    # Pillow 10 replaced an RGBX image under an RGB file before decoding: the
    # buffer stayed zero. Whatever Pillow does, the pixels must be the file's
    from PIL import ImageFile

    def load_prepare(self):
        self.im = Image.core.new(self.mode, self.size)

    monkeypatch.setattr(ImageFile.ImageFile, "load_prepare", load_prepare)
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (20, 30, 3), np.uint8)).save(path)
    with Image.open(path) as im:
        assert opening.decode_into_buffer(im) is None
    picture = load(str(path))
    np.testing.assert_array_equal(picture.pixels, _decoded_by_pillow(path))
