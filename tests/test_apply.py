"""imgconv apply: results against scipy.ndimage, image modes, alpha, batches and safety."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from typer.testing import CliRunner

from imgconv.cli import app
from imgconv.cli.output import RICH_TERMINAL_VARIABLES

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=float)
DISTINCT = "1 2 4; 8 16 32; 64 128 -256"
DISTINCT_K = np.array([[1, 2, 4], [8, 16, 32], [64, 128, -256]], dtype=float)

runner = CliRunner()


def invoke(*args: str, input: bytes | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def crop(name: str, size: int = 48) -> Image.Image:
    im = Image.open(SAMPLES / name)
    im.load()
    return im.crop((100, 100, 100 + size, 100 + size))


@pytest.fixture
def gray_png(tmp_path: Path) -> Path:
    path = tmp_path / "camera.png"
    crop("camera.png").save(path)
    return path


@pytest.fixture
def rgb_png(tmp_path: Path) -> Path:
    path = tmp_path / "astronaut.png"
    crop("astronaut.png").save(path)
    return path


@pytest.fixture
def rgba_png(tmp_path: Path) -> Path:
    path = tmp_path / "horse.png"
    crop("horse.png").save(path)
    return path


def expected_8bit(pixels: np.ndarray, kernel: np.ndarray, how: str = "clip") -> np.ndarray:
    x = pixels.astype(np.float64)
    if x.ndim == 2:
        y = ndi.correlate(x, kernel, mode="reflect")
    else:
        y = np.stack([ndi.correlate(x[:, :, c], kernel, mode="reflect")
                      for c in range(x.shape[2])], -1)
    if how == "abs":
        y = np.abs(y)
    return np.clip(np.rint(y), 0, 255)


def assert_within_one_level(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert np.abs(actual.astype(np.int32) - expected.astype(np.int32)).max() <= 1


# --- results ----------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["gray_png", "rgb_png"])
def test_matches_scipy_on_sample_images(fixture, request, tmp_path):
    src = request.getfixturevalue(fixture)
    out = tmp_path / "out.png"
    result = invoke("apply", src, "-k", DISTINCT, "-o", out, "--output-map", "clip")
    assert result.exit_code == 0, result.output
    expected = expected_8bit(np.asarray(Image.open(src)), DISTINCT_K)
    assert_within_one_level(np.asarray(Image.open(out)), expected)


def test_named_kernel_with_abs_mapping(gray_png, tmp_path):
    out = tmp_path / "edges.png"
    result = invoke("apply", gray_png, "-k", "sobel-x", "-o", out, "--output-map", "abs")
    assert result.exit_code == 0, result.output
    expected = expected_8bit(np.asarray(Image.open(gray_png)), SOBEL_X, "abs")
    assert_within_one_level(np.asarray(Image.open(out)), expected)


def test_jpeg_input_and_output(tmp_path):
    src = tmp_path / "coffee.jpg"
    crop("coffee.png").convert("RGB").save(src, quality=95)
    out = tmp_path / "blur.jpg"
    result = invoke("apply", src, "-k", "box-blur", "-o", out, "--quality", "100")
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size == (48, 48)
    expected = expected_8bit(np.asarray(Image.open(src)), np.ones((3, 3)) / 9)
    # JPEG re-encoding at quality 100 stays within a few levels
    assert np.abs(np.asarray(Image.open(out)).astype(int) - expected).mean() < 2


def test_16bit_stays_16bit(tmp_path):
    src = tmp_path / "deep.png"
    data = (np.asarray(crop("camera.png"), dtype=np.uint16) * 257)
    Image.fromarray(data).save(src)
    out = tmp_path / "deep-out.png"
    result = invoke("apply", src, "-k", "box-blur", "-o", out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.mode == "I;16"
        actual = np.asarray(im).astype(np.int64)
    expected = np.clip(np.rint(ndi.correlate(data.astype(float), np.ones((3, 3)) / 9,
                                             mode="reflect")), 0, 65535)
    assert np.abs(actual - expected).max() <= 1


def test_chained_kernels_stay_float_between_stages(gray_png, tmp_path):
    out = tmp_path / "o.npy"
    result = invoke("apply", gray_png, "-k", "box-blur", "-k", "sobel-x", "-o", out)
    assert result.exit_code == 0, result.output
    x = np.asarray(Image.open(gray_png), dtype=np.float64)
    expected = ndi.correlate(ndi.correlate(x, np.ones((3, 3)) / 9, mode="reflect"), SOBEL_X,
                             mode="reflect")
    actual = np.load(out)
    assert actual.dtype == np.float32 and actual.shape == (48, 48)
    np.testing.assert_allclose(actual, expected, atol=1e-3)


def test_cnn_layer_shape_and_values(rgb_png, tmp_path):
    out = tmp_path / "layer.npy"
    result = invoke("apply", rgb_png, "-k", DISTINCT, "--padding", "valid", "--stride", "2",
                    "--activation", "relu", "--pool", "max", "--pool-size", "2", "-o", out)
    assert result.exit_code == 0, result.output
    x = np.asarray(Image.open(rgb_png), dtype=np.float64)
    conv = np.stack([ndi.correlate(x[:, :, c], DISTINCT_K, mode="constant")[1:-1, 1:-1][::2, ::2]
                     for c in range(3)], -1)
    relu = np.maximum(conv, 0)
    h, w = relu.shape[0] // 2 * 2, relu.shape[1] // 2 * 2
    pooled = relu[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).max(axis=(1, 3))
    actual = np.load(out)
    assert actual.shape == (11, 11, 3)  # (48 - 3)/2 + 1 = 23, then (23 - 2)/2 + 1 = 11
    np.testing.assert_allclose(actual, pooled, rtol=1e-5, atol=1e-2)


def test_gray_uses_pillow_luminance(rgb_png, tmp_path):
    out = tmp_path / "g.npy"
    assert invoke("apply", rgb_png, "-k", "identity", "--gray", "-o", out).exit_code == 0
    expected = np.asarray(Image.open(rgb_png).convert("L"), dtype=np.float32)
    np.testing.assert_array_equal(np.load(out), expected)


def test_convolve_mode_flips(gray_png, tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    assert invoke("apply", gray_png, "-k", DISTINCT, "--mode", "convolve", "-o", a).exit_code == 0
    x = np.asarray(Image.open(gray_png), dtype=np.float64)
    np.testing.assert_allclose(np.load(a), ndi.convolve(x, DISTINCT_K, mode="reflect"),
                               rtol=1e-5, atol=1e-2)
    assert invoke("apply", gray_png, "-k", DISTINCT, "--pad-mode", "constant", "--cval", "9",
                  "--dilation", "2", "-o", b).exit_code == 0
    spread = np.zeros((5, 5))
    spread[::2, ::2] = DISTINCT_K
    np.testing.assert_allclose(np.load(b), ndi.correlate(x, spread, mode="constant", cval=9),
                               rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize(("how", "expected"), [
    ("clip", lambda y: np.clip(np.rint(y), 0, 255)),
    ("abs", lambda y: np.clip(np.rint(np.abs(y)), 0, 255)),
    ("offset", lambda y: np.clip(np.rint(y + 128), 0, 255)),
    ("normalize", lambda y: np.rint((y - y.min()) * 255 / (y.max() - y.min()))),
])
def test_output_maps(gray_png, tmp_path, how, expected):
    out = tmp_path / f"{how}.png"
    result = invoke("apply", gray_png, "-k", "sobel-x", "--output-map", how, "-o", out)
    assert result.exit_code == 0, result.output
    y = ndi.correlate(np.asarray(Image.open(gray_png), dtype=np.float64), SOBEL_X, mode="reflect")
    assert_within_one_level(np.asarray(Image.open(out)), expected(y))


def test_clip_warning_when_much_is_lost(gray_png, tmp_path):
    result = invoke("apply", gray_png, "-k", "sobel-x", "--output-map", "clip",
                    "-o", tmp_path / "o.png")
    assert result.exit_code == 0
    assert ("were clipped by --output-map clip; try --output-map abs or offset or normalize"
            in result.stderr)


# --- alpha --------------------------------------------------------------------------------

def test_alpha_copy_keeps_alpha_and_follows_stride(rgba_png, tmp_path):
    out = tmp_path / "o.png"
    result = invoke("apply", rgba_png, "-k", "sobel-x", "--alpha", "copy", "--stride", "2",
                    "-o", out)
    assert result.exit_code == 0, result.output
    src_alpha = np.asarray(Image.open(rgba_png))[:, :, 3]
    with Image.open(out) as im:
        assert im.mode == "RGBA" and im.size == (24, 24)
        np.testing.assert_array_equal(np.asarray(im)[:, :, 3], src_alpha[::2, ::2])


def test_alpha_premultiply_has_no_fringes(tmp_path):
    # opaque red next to fully transparent green: a blur must not leak green into the red
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)
    rgba[:, 4:] = (0, 255, 0, 0)
    src = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(src)
    out = tmp_path / "b.png"
    assert invoke("apply", src, "-k", "box-blur", "-o", out).exit_code == 0  # auto = premultiply
    result = np.asarray(Image.open(out))
    visible = result[:, :, 3] > 0
    assert (result[visible][:, 1] == 0).all()  # no green where anything shows
    assert (result[visible][:, 0] == 255).all()
    assert result[0, 4, 3] == 85  # alpha blurred: 1/3 of the window is opaque


def test_alpha_drop(rgba_png, tmp_path):
    out = tmp_path / "o.png"
    assert invoke("apply", rgba_png, "-k", "box-blur", "--alpha", "drop", "-o", out).exit_code == 0
    assert Image.open(out).mode == "RGB"


@pytest.mark.parametrize("mode", ["P", "1", "LA", "CMYK", "I", "F"])
def test_image_modes(tmp_path, mode):
    base = crop("astronaut.png" if mode in ("P", "CMYK") else "camera.png", 16)
    src = tmp_path / ("in.tiff" if mode in ("CMYK", "I", "F") else "in.png")
    base.convert(mode).save(src)
    out = tmp_path / "out.png"
    result = invoke("apply", src, "-k", "box-blur", "-o", out)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (16, 16)
    if mode == "CMYK":
        assert "CMYK image converted to RGB" in result.stderr


def test_exif_orientation_is_applied(tmp_path):
    im = crop("camera.png", 16).crop((0, 0, 16, 8))  # 16 wide, 8 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    src = tmp_path / "rotated.jpg"
    im.save(src, exif=exif)
    out = tmp_path / "o.png"
    assert invoke("apply", src, "-k", "identity", "-o", out).exit_code == 0
    assert Image.open(out).size == (8, 16)


def test_multiframe_first_frame_with_warning(tmp_path):
    frames = [Image.new("L", (8, 8), v) for v in (10, 200)]
    src = tmp_path / "anim.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:])
    out = tmp_path / "o.npy"
    result = invoke("apply", src, "-k", "identity", "-o", out)
    assert result.exit_code == 0, result.output
    assert "has 2 frames; only the first is filtered" in result.stderr
    assert np.load(out).max() < 100


# --- batches and safety ---------------------------------------------------------------------

def test_out_dir_keeps_relative_paths(tmp_path, gray_png, rgb_png):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    shutil.copy(gray_png, photos / "a.png")
    shutil.copy(rgb_png, photos / "sub" / "b.png")
    out = tmp_path / "out"
    result = invoke("apply", photos, "-k", "box-blur", "--out-dir", out, "--recursive",
                    "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a.png", "sub/b.png"]
    assert "written 2, skipped 0, failed 0" in result.stderr


def test_name_template_and_format(tmp_path, gray_png):
    out = tmp_path / "out"
    result = invoke("apply", gray_png, "-k", "sobel-x", "--out-dir", out,
                    "--name", "{stem}-{kernel}{ext}", "--format", "jpg")
    assert result.exit_code == 0, result.output
    assert (out / "camera-sobel-x.jpg").exists()


def test_batch_with_corrupt_file_continues(tmp_path, gray_png):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(gray_png, folder / "good.png")
    (folder / "bad.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    result = invoke("apply", folder, "-k", "box-blur", "--out-dir", out)
    assert result.exit_code == 1
    assert (out / "good.png").exists() and not (out / "bad.png").exists()
    assert "error:" in result.stderr and "bad.png" in result.stderr
    assert "written 1, skipped 0, failed 1" in result.stderr
    assert isinstance(result.exception, SystemExit)  # an exit, not a crash


def test_refuses_to_overwrite(tmp_path, gray_png):
    out = tmp_path / "o.png"
    out.write_bytes(b"precious")
    result = invoke("apply", gray_png, "-k", "box-blur", "-o", out)
    assert result.exit_code == 1
    assert "already exists (use --overwrite to replace it)" in result.stderr
    assert out.read_bytes() == b"precious"
    assert invoke("apply", gray_png, "-k", "box-blur", "-o", out, "--overwrite").exit_code == 0
    assert Image.open(out).size == (48, 48)


def test_skip_existing_counts_skipped(tmp_path, gray_png):
    out = tmp_path / "out"
    out.mkdir()
    (out / "camera.png").write_bytes(b"old")
    result = invoke("apply", gray_png, "-k", "box-blur", "--out-dir", out, "--skip-existing")
    assert result.exit_code == 0
    assert "written 0, skipped 1, failed 0" in result.stderr
    assert (out / "camera.png").read_bytes() == b"old"


def test_never_writes_onto_an_input(tmp_path, gray_png):
    before = gray_png.read_bytes()
    result = invoke("apply", gray_png, "-k", "box-blur", "-o", gray_png, "--overwrite")
    assert result.exit_code == 1
    assert "is an input; refusing to write it" in result.stderr
    assert gray_png.read_bytes() == before
    result = invoke("apply", gray_png.parent, "-k", "box-blur", "--out-dir", gray_png.parent,
                    "--overwrite")
    assert result.exit_code == 1
    assert gray_png.read_bytes() == before


def test_atomic_write_leaves_nothing_on_failure(tmp_path, gray_png, monkeypatch):
    import imgconv.batch.job

    def failing_encode(array, fmt, stream, **kwargs):
        stream.write(b"half an image")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imgconv.batch.job, "encode", failing_encode)
    out = tmp_path / "out"
    result = invoke("apply", gray_png, "-k", "box-blur", "--out-dir", out, "--jobs", "1")
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr
    assert list(out.iterdir()) == []  # no output, no temporary file


def test_dry_run_writes_nothing(tmp_path, gray_png):
    out = tmp_path / "out"
    result = invoke("apply", gray_png, "-k", "sobel", "--stride", "2", "--pool", "max",
                    "--pool-size", "2", "--out-dir", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert not out.exists()
    text = result.stdout
    assert "floor((48+1+1-3)/2)+1 = 24" in text
    assert "floor((24-2)/2)+1 = 12" in text
    assert "(48x48) ->" in text and "(12x12)" in text
    assert "will clip" in text or "fits" in text


def test_dry_run_says_what_an_existing_output_would_get(tmp_path, gray_png):
    out = tmp_path / "o.png"
    out.write_bytes(b"keep me")
    dangling = tmp_path / "link.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    for target, flags, expected in (
            (out, [], f"(would fail: {out}: already exists (use --overwrite to replace it))"),
            (out, ["--overwrite"], "(exists: replaced)"),
            (out, ["--skip-existing"], "(exists: skipped)"),
            (dangling, [], f"(would fail: {dangling}: already exists"),
            (gray_png, ["--overwrite"], f"(would fail: {gray_png}: output {gray_png} is an input")):
        result = invoke("apply", gray_png, "-k", "sobel", "-o", target, "--dry-run", *flags)
        assert result.exit_code == 0, result.output
        assert expected in result.stdout.splitlines()[-1], result.stdout
        if "would fail" in expected:  # as the run itself says
            real = invoke("apply", gray_png, "-k", "sobel", "-o", target, *flags)
            assert real.exit_code == 1
            assert expected.removeprefix("(would fail: ").rstrip(")") in real.stderr
    assert out.read_bytes() == b"keep me"


def test_stdin_to_stdout(gray_png):
    result = invoke("apply", "-", "-k", "box-blur", "-o", "-", "--format", "png",
                    input=gray_png.read_bytes())
    assert result.exit_code == 0, result.stderr
    with Image.open(io.BytesIO(result.stdout_bytes)) as im:
        assert im.size == (48, 48)


def test_manifest(tmp_path, gray_png):
    manifest = tmp_path / "run.json"
    result = invoke("apply", gray_png, "-k", "box-blur", "-o", tmp_path / "o.png",
                    "--manifest", manifest)
    assert result.exit_code == 0, result.output
    doc = json.loads(manifest.read_text())
    assert doc["pipeline"]["stages"][0]["kernel"] == "box-blur"
    entry = doc["inputs"][0]
    assert entry["status"] == "written" and entry["output_shape"] == [48, 48]
    import hashlib
    assert entry["sha256"] == hashlib.sha256(gray_png.read_bytes()).hexdigest()


def test_pipeline_file_builds_the_same_pipeline(tmp_path):
    from imgconv.pipeline import Pipeline

    spec = tmp_path / "layer.yaml"
    spec.write_text(
        "stages:\n"
        "  - kernel: box-blur\n    stride: 2\n    padding: valid\n"
        "  - kernel: sobel-x\n    stride: 2\n    padding: valid\n"
        "  - activation: relu\n"
        "  - pool: {op: max, size: 2}\n"
        "output: normalize\n"
    )
    from_yaml = Pipeline.from_yaml(spec)
    from_flags = Pipeline.from_options(["box-blur", "sobel-x"], stride="2", padding="valid",
                                       activation="relu", pool="max", pool_size="2",
                                       output="normalize")
    assert from_yaml == from_flags


def test_verify_and_check(gray_png, tmp_path):
    result = invoke("apply", gray_png, "-k", "gaussian:sigma=1", "-o", tmp_path / "o.png",
                    "--verify")
    assert result.exit_code == 0, result.output
    result = invoke("check", gray_png, "-k", "sobel", "--stride", "2", "--padding", "1,2,0,3")
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout
    result = invoke("check", gray_png, "-k", "0.1 0.2; 0.3 0.4", "--tol", "1e-12")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout


def test_max_pixels(tmp_path, gray_png):
    out = tmp_path / "o.png"
    result = invoke("apply", gray_png, "-k", "box-blur", "-o", out, "--max-pixels", "1000")
    assert result.exit_code == 1
    assert "more than the limit of 1,000" in result.stderr
    assert not out.exists()


# --- usage errors: exit 2, one line, nothing touched ----------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["-k", "nosuchkernel"], "nosuchkernel"),
    (["-k", "box-blur", "--stride", "0"], "stride must be >= 1"),
    (["-k", "box-blur", "--padding", "wide"], "--padding must be one of same, valid, full"),
    (["-k", "box-blur", "--pad-mode", "bogus"], "--pad-mode must be one of"),
    (["-k", "box-blur", "--mode", "flip"], "--mode must be one of correlate, convolve"),
    (["-k", "box-blur", "--pool-size", "2"], "--pool-size needs --pool"),
    (["-k", "box-blur", "--pool", "median", "--pool-size", "2"], "--pool must be one of max"),
    (["-k", "box-blur", "--activation", "tanh"], "--activation must be one of none, relu, abs"),
    (["-k", "box-blur", "--output-map", "clamp"], "--output-map must be one of"),
    (["-k", "box-blur", "--alpha", "keep"], "--alpha must be one of"),
    (["-k", "box-blur", "--format", "gif"], "--format must be one of"),
    (["-k", "box-blur", "--depth", "12"], "--depth must be one of"),
    (["-k", "box-blur", "--overwrite", "--skip-existing"], "contradict"),
    (["-k", "box-blur", "--name", "{stem}{size}"], "--name: unknown field {size}"),
    ([], "give at least one kernel"),
])
def test_usage_errors(tmp_path, gray_png, args, message):
    out = tmp_path / "out"
    result = invoke("apply", gray_png, *args, "--out-dir", out)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("error:")
    assert isinstance(result.exception, SystemExit)  # an exit, not a crash
    assert not out.exists()


def test_bad_pipeline_yaml(tmp_path, gray_png):
    spec = tmp_path / "p.yaml"
    spec.write_text("stages:\n  - kernel: box-blur\n    strid: 2\n")
    result = invoke("apply", gray_png, "--pipeline", spec, "-o", tmp_path / "o.png")
    assert result.exit_code == 2
    assert "unknown key 'strid' in stage 1 (did you mean stride?)" in result.stderr
    spec.write_text("stages: [kernel: [}\n")
    result = invoke("apply", gray_png, "--pipeline", spec, "-o", tmp_path / "o.png")
    assert result.exit_code == 2 and "not valid YAML" in result.stderr
    # a file's errors name its keys, not the command line's flags
    spec.write_text("stages:\n  - kernel: sobel\n  - pool: {op: max}\n")
    result = invoke("apply", gray_png, "--pipeline", spec, "-o", tmp_path / "o.png")
    assert result.exit_code == 2
    assert f"error: {spec}: stage 2: pool op needs pool size N or N,M" in result.stderr
    assert "--pool" not in result.stderr


def test_missing_input_is_exit_1(tmp_path):
    result = invoke("apply", tmp_path / "nope.png", "-k", "box-blur", "-o", tmp_path / "o.png")
    assert result.exit_code == 1
    assert "nope.png: no such file" in result.stderr
    result = invoke("apply", f"{tmp_path / 'photos'}/", "-k", "box-blur",
                    "--out-dir", tmp_path / "out")
    assert result.exit_code == 1
    assert f"{tmp_path / 'photos'}/: no such folder" in result.stderr
    # a pattern that matches nothing is a usage error: nothing to filter at all
    result = invoke("apply", f"{tmp_path}/*.png", "-k", "box-blur", "--out-dir", tmp_path / "o")
    assert result.exit_code == 2
    assert "*.png: the pattern matches no image files" in result.stderr


def test_several_inputs_with_output_file(tmp_path, gray_png, rgb_png):
    result = invoke("apply", gray_png, rgb_png, "-k", "box-blur", "-o", tmp_path / "o.png")
    assert result.exit_code == 2
    assert "-o takes one input, got 2" in result.stderr


def test_debug_shows_traceback(tmp_path, gray_png):
    result = invoke("apply", gray_png, "-k", "nosuchkernel", "-o", tmp_path / "o.png", "--debug")
    assert result.exit_code != 0
    assert result.exception is not None


# --- the real installed script ----------------------------------------------------------------

def test_real_process_apply_and_error(imgconv_script, tmp_path, gray_png):
    out = tmp_path / "edges.png"
    done = subprocess.run([imgconv_script, "apply", str(gray_png), "-k", "sobel", "-o", str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (48, 48)
    done = subprocess.run([imgconv_script, "apply", str(gray_png), "-k", "sobl", "-o",
                           str(tmp_path / "x.png")], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "Traceback" not in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_real_process_stdin_stdout(imgconv_script, gray_png):
    done = subprocess.run([imgconv_script, "apply", "-", "-k", "box-blur", "-o", "-", "--format",
                           "png"], input=gray_png.read_bytes(), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert Image.open(io.BytesIO(done.stdout)).size == (48, 48)


def test_ctrl_c_exits_130_and_leaves_no_partial_file(tmp_path, gray_png, monkeypatch):
    import imgconv.batch.job

    def interrupted(array, fmt, stream, **kwargs):
        stream.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(imgconv.batch.job, "encode", interrupted)
    out = tmp_path / "out"
    result = invoke("apply", gray_png, "-k", "box-blur", "--out-dir", out, "--jobs", "1")
    assert result.exit_code == 130
    assert list(out.iterdir()) == []


def test_python_api_round_trip(tmp_path, gray_png):
    from imgconv.imageio import load, save
    from imgconv.pipeline import Pipeline

    pipeline = Pipeline.from_options(["sobel"], stride=2, activation="relu")
    picture = load(str(gray_png))
    values = pipeline.run(picture.pixels)
    assert values.shape == (24, 24)
    save(values, tmp_path / "edges.png", output_map="normalize")
    assert Image.open(tmp_path / "edges.png").size == (24, 24)
    with pytest.raises(Exception, match="already exists"):
        save(values, tmp_path / "edges.png")


def test_outputs_get_ordinary_permissions(tmp_path, gray_png):
    import os
    import stat

    out = tmp_path / "o.png"
    assert invoke("apply", gray_png, "-k", "box-blur", "-o", out).exit_code == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask


def test_threads_option_and_bad_environment(tmp_path, gray_png, monkeypatch):
    out = tmp_path / "o.npy"
    assert invoke("apply", gray_png, "-k", "gaussian:sigma=2", "--threads", "2",
                  "-o", out).exit_code == 0
    one = tmp_path / "one.npy"
    assert invoke("apply", gray_png, "-k", "gaussian:sigma=2", "--threads", "1",
                  "-o", one).exit_code == 0
    np.testing.assert_array_equal(np.load(out), np.load(one))
    monkeypatch.setenv("IMGCONV_THREADS", "many")
    result = invoke("apply", gray_png, "-k", "box-blur", "-o", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "IMGCONV_THREADS must be a whole number" in result.stderr


def test_pipeline_file_not_text(tmp_path, gray_png):
    result = invoke("apply", gray_png, "--pipeline", gray_png, "-o", tmp_path / "o.png")
    assert result.exit_code == 2
    assert "not a pipeline YAML file (not UTF-8 text)" in result.stderr


def test_premultiply_leaves_transparent_pixels_clean(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = (200, 100, 50, 255)
    src = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(src)
    out = tmp_path / "b.npy"
    result = invoke("apply", src, "-k", "gaussian:sigma=2", "-o", out)
    assert result.exit_code == 0, result.output
    assert "clipped" not in result.stderr
    values = np.load(out)
    assert values.min() >= -1e-3 and values.max() <= 200 + 1e-3


def test_stdin_not_an_image():
    result = invoke("apply", "-", "-k", "box-blur", "-o", "-", "--format", "png", input=b"")
    assert result.exit_code == 1
    assert "<stdin>: not a readable image (empty input)" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["-o", "{tmp}/o.jpg", "--depth", "16"], "--depth 16 needs png or tiff output, not jpg"),
    (["-o", "{tmp}/o.png", "--depth", "float"], "--depth float needs tiff output, not png"),
    (["-o", "{tmp}"], "is a folder; use --out-dir"),
    (["-o", "{tmp}/o.png", "--max-pixels", "0"], "--max-pixels"),
])
def test_more_usage_errors(tmp_path, gray_png, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(tmp_path.iterdir())
    result = invoke("apply", gray_png, "-k", "box-blur", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert sorted(tmp_path.iterdir()) == before


def test_glob_without_matches_names_the_pattern(tmp_path):
    result = invoke("apply", str(tmp_path / "*.png"), "-k", "box-blur", "--out-dir", tmp_path)
    assert result.exit_code == 2
    assert "*.png: the pattern matches no image files" in result.stderr


def test_same_input_twice_is_filtered_once(tmp_path, gray_png):
    result = invoke("apply", gray_png, gray_png, "-k", "box-blur", "--out-dir", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "written 1, skipped 0, failed 0" in result.stderr


def test_subfolders_without_recursive_are_mentioned(tmp_path, gray_png):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(gray_png, folder / "a.png")
    shutil.copy(gray_png, folder / "sub" / "b.png")
    result = invoke("apply", folder, "-k", "box-blur", "--out-dir", tmp_path / "out")
    assert result.exit_code == 0
    assert "1 sub-folder(s) not read; add --recursive" in result.stderr
    assert not (tmp_path / "out" / "sub").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["apply", "x.png", "-k", "sobel", "--activaton", "relu", "-o", "y.png"],
     "error: No such option: --activaton"),
    (["apply", "x.png", "-k", "sobel", "--quality", "0", "-o", "y.png"],
     "error: Invalid value for '--quality'"),
    (["show"], "error: Missing argument"),
    (["bogus"], "error: No such command 'bogus'"),
])
def test_real_process_usage_errors_are_one_line(imgconv_script, args, message):
    done = subprocess.run([imgconv_script, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith(message)
    assert done.stderr.count("\n") == 1


def test_dry_run_value_range_follows_16bit_input(tmp_path):
    src = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(src)
    result = invoke("apply", src, "-k", "box-blur", "-o", tmp_path / "o.png", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "values 0 .. 65535" in result.stdout
    assert "fits 0 .. 65535" in result.stdout


def test_icc_profile_is_kept(tmp_path, rgb_png):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "tagged.png"
    Image.open(rgb_png).save(src, icc_profile=icc)
    for out in (tmp_path / "o.png", tmp_path / "o.jpg", tmp_path / "o.tiff"):
        assert invoke("apply", src, "-k", "box-blur", "-o", out).exit_code == 0
        assert Image.open(out).info.get("icc_profile") == icc


def test_glob_output_paths_are_relative_to_the_pattern_base(tmp_path, gray_png):
    folder = tmp_path / "shots" / "day1"
    folder.mkdir(parents=True)
    shutil.copy(gray_png, folder / "a.png")
    out = tmp_path / "out"
    result = invoke("apply", f"{tmp_path}/shots/**/*.png", "-k", "box-blur", "--out-dir", out)
    assert result.exit_code == 0, result.output
    assert (out / "day1" / "a.png").exists()


def _crash_on_three(n: int) -> int:
    import os

    if n == 3:
        os._exit(9)  # as if the OOM killer took this worker
    return n


def test_process_executor_survives_a_dead_worker(capfd):
    from imgconv.batch import ProcessExecutor

    results = list(ProcessExecutor(2).map_unordered(
        _crash_on_three, list(range(10)), lambda item, reason: ("lost", item)))
    items = sorted(r[1] if isinstance(r, tuple) else r for r in results)
    assert items == list(range(10))  # every item accounted for exactly once
    assert ("lost", 3) in results
    assert any(not isinstance(r, tuple) for r in results)  # the batch went on
    # the pool terminates its other workers with SIGTERM; one waiting for work (or
    # inside the pool's queue code) exits quietly instead of raising KeyboardInterrupt,
    # which printed a traceback and could leave a queue lock held, hanging shutdown
    assert "Traceback" not in capfd.readouterr().err


def test_premultiply_refuses_bias_and_auto_falls_back_to_copy(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (200, 100, 50, 255)
    src = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(src)
    spec = tmp_path / "biasblur.yaml"
    spec.write_text("name: biasblur\nmatrix: [[1, 1, 1], [1, 1, 1], [1, 1, 1]]\n"
                    "scale: 1/9\nbias: 20\n")
    result = invoke("apply", src, "-k", spec, "--alpha", "premultiply", "-o", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "has a bias; use --alpha copy" in result.stderr
    out = tmp_path / "o.png"
    assert invoke("apply", src, "-k", spec, "-o", out).exit_code == 0  # auto -> copy
    got = np.asarray(Image.open(out))
    np.testing.assert_array_equal(got[0, 0], [220, 120, 70, 255])
    assert got[0, 7, 3] == 0


@pytest.mark.parametrize(("where", "message"), [
    ("input", "is an input image; refusing to replace it"),
    ("output", "is also the output of"),
    ("folder", "is a folder"),
])
def test_manifest_never_replaces_inputs_or_outputs(tmp_path, gray_png, where, message):
    out = tmp_path / "o.png"
    target = {"input": gray_png, "output": out, "folder": tmp_path}[where]
    before = gray_png.read_bytes()
    result = invoke("apply", gray_png, "-k", "box-blur", "-o", out, "--overwrite",
                    "--manifest", target)
    assert result.exit_code == 2
    assert message in result.stderr
    assert gray_png.read_bytes() == before and not out.exists()


@pytest.mark.parametrize(("template", "message"), [
    ("{stem", "--name '{stem'"),
    ("{stem:>50}{ext}", "fields take no format spec or conversion"),
    ("{stem!r}{ext}", "fields take no format spec or conversion"),
])
def test_bad_name_templates(tmp_path, gray_png, template, message):
    result = invoke("apply", gray_png, "-k", "box-blur", "--out-dir", tmp_path / "o",
                    "--name", template)
    assert result.exit_code == 2
    assert message in result.stderr


def test_out_dir_inside_the_input_folder_is_not_read_back(tmp_path, gray_png):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(gray_png, folder / "a.png")
    first = invoke("apply", folder, "-r", "-k", "box-blur", "--out-dir", folder / "out")
    assert first.exit_code == 0, first.output
    again = invoke("apply", folder, "-r", "-k", "box-blur", "--out-dir", folder / "out",
                   "--skip-existing")
    assert again.exit_code == 0, again.output
    assert "written 0, skipped 1, failed 0" in again.stderr
    assert not (folder / "out" / "out").exists()


def test_dry_run_reports_a_truncated_file_as_unreadable(tmp_path, rgb_png):
    # Pillow reads a PNG's eXIf chunk, for the orientation, past the point it was cut
    data = rgb_png.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    result = invoke("apply", cut, "-k", "box-blur", "-o", tmp_path / "o.png", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "cut.png: cannot read the image's header (image file is truncated)" in result.output
    assert "internal error" not in result.output


def test_dry_run_says_when_the_output_would_be_empty(tmp_path):
    src = tmp_path / "tiny.png"
    Image.new("L", (4, 4)).save(src)
    result = invoke("apply", src, "-k", "box:7", "--padding", "valid", "-o", tmp_path / "o.png",
                    "--dry-run")
    assert result.exit_code == 0
    assert "would fail, stage 1 leaves nothing" in result.stdout


def test_per_file_line_shows_the_shapes(tmp_path, rgb_png):
    result = invoke("apply", rgb_png, "-k", "sobel-x", "--stride", "2", "--pool", "max",
                    "--pool-size", "2", "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.output
    assert f"{rgb_png} (48x48x3) -> {tmp_path / 'o.png'} (12x12x3)" in result.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    (["-k", "box:60", "--padding", "valid", "-o", "{tmp}/o.png"], 1,
     "kernel box:size=60: output would be empty"),
    (["-k", "box-blur", "-o", "{tmp}/afile/x.png"], 1, "a file is in the way"),
    (["-k", "box-blur", "-o", "{tmp}/o.png", "--format", "jpg"], 2,
     "the extension says png but --format says jpg"),
    (["-k", "box-blur", "-o", "{tmp}/o.png", "--verify", "--tol", "-1"], 2, "--tol"),
])
def test_more_errors_read_well(tmp_path, gray_png, args, code, message):
    (tmp_path / "afile").write_text("not a folder")
    result = invoke("apply", gray_png, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "internal error" not in result.stderr


def _crash_once(item: tuple[str, int]) -> int:
    import os

    marker, n = item
    if n == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)  # killed once, e.g. by the OOM killer; fine when retried
    return n


def test_process_executor_retries_files_in_flight_when_a_worker_dies(tmp_path):
    from imgconv.batch import ProcessExecutor

    executor = ProcessExecutor(2)
    marker = str(tmp_path / "crashed")
    results = list(executor.map_unordered(
        _crash_once, [(marker, n) for n in range(10)], lambda item, reason: ("lost", item)))
    assert sorted(results) == list(range(10))  # nothing lost: every file retried once
    assert executor.worker_died


def test_remove_temporary_files_left_by_a_killed_worker(tmp_path):
    from imgconv.batch import Source, Task, remove_temporary_files

    (tmp_path / ".a.png.k3j_x9q2.part").write_bytes(b"half")
    (tmp_path / ".other.png.zz.part").write_bytes(b"not ours")
    (tmp_path / "a.png").write_bytes(b"done")
    remove_temporary_files([Task(Source("in/a.png"), str(tmp_path / "a.png"), "png")])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.png.zz.part", "a.png"]


def test_brackets_in_paths_and_specs_are_text_not_markup(tmp_path, gray_png):
    folder = tmp_path / "a[red]b"
    folder.mkdir()
    src = folder / "c[b].png"
    shutil.copy(gray_png, src)
    result = invoke("apply", src, "-k", "box-blur", "-o", folder / "o[b].png")
    assert result.exit_code == 0, result.output
    assert f"{src} (48x48) -> {folder / 'o[b].png'} (48x48)" in result.stderr
    result = invoke("show", "foo[/bar]")
    assert result.exit_code == 2
    assert "unknown kernel 'foo[/bar]'" in result.stderr


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA", "I;16", "I", "F"])
@pytest.mark.parametrize("size", [(1, 1), (1, 4), (3, 700), (301, 2)])
def test_to_array_matches_numpy_in_every_mode(mode, size, monkeypatch):
    from imgconv import imageio

    rng = np.random.default_rng(7)
    im = Image.fromarray(rng.integers(0, 256, (*size[::-1], 4), dtype=np.uint8), "RGBA")
    im = im.convert(mode) if mode not in ("I;16", "I", "F") else Image.fromarray(
        rng.integers(0, 60000, size[::-1]).astype(
            {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    assert im.mode == mode
    expected = np.asarray(im)
    monkeypatch.setattr(imageio, "UNPACK_CHUNK", 1)  # a chunk per row: every boundary
    got = imageio._to_array(im)
    # bytes, not values: a bool array holding 128 would still compare equal to True
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()

    def broken(*args, **kwargs):
        raise AttributeError("no raw encoder")

    monkeypatch.setattr(imageio, "_unpack_into", broken)
    assert imageio._to_array(im).tobytes() == expected.tobytes()


def test_jpeg_from_a_shared_rgbx_buffer_equals_one_from_rgb():
    from imgconv.imageio import _rgbx_buffer, encode, output_array

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    view = output_array(rgb.shape, np.uint8, "jpg")
    view[...] = rgb
    assert _rgbx_buffer(view) is not None and _rgbx_buffer(rgb) is None
    assert _rgbx_buffer(output_array(rgb.shape, np.uint8, "png")) is None
    assert _rgbx_buffer(view[1:]) is None and _rgbx_buffer(view[:, :, :2]) is None
    shared, plain = io.BytesIO(), io.BytesIO()
    encode(view, "jpg", shared, quality=90)
    encode(rgb, "jpg", plain, quality=90)
    assert shared.getvalue() == plain.getvalue()


def test_apply_imports_only_what_it_uses(tmp_path, rgb_png):
    # scipy is only the reference (check, --verify); hashlib loads OpenSSL, 3 MiB of
    # peak memory, and is only for --manifest; Rich (50 ms) only draws in a terminal;
    # numpy.ma (15 ms, via np.unique) and PIL.ImageOps (20 ms) are not needed for a
    # photo that is not rotated; PyYAML (15 ms) is for kernel files, not built-ins
    # and the extras (numba, dask, distributed, tifffile, zarr) are never imported by it
    unwanted = ("scipy", "hashlib", "_hashlib", "rich", "numpy.ma", "PIL.ImageOps",
                "imgconv.cli.views", "yaml", "numba", "dask", "distributed", "tifffile",
                "zarr", "imagecodecs")
    code = ("import sys\nfrom imgconv.__main__ import script as main\n"
            f"sys.argv = ['imgconv', 'apply', {str(rgb_png)!r}, '-k', 'sobel-x', '-o', "
            f"{str(tmp_path / 'o.jpg')!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None)\n"
            f"print(sorted(m for m in {unwanted!r} if m in sys.modules))\n"
            "import gc\nprint('frozen' if gc.get_freeze_count() else 'not frozen')\n")
    # (without --jit: numba itself imports scipy, hashlib and PyYAML)
    env = {k: v for k, v in os.environ.items()
           if k not in RICH_TERMINAL_VARIABLES and k != "IMGCONV_JIT"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr
    # and the command's exit leaves the garbage collector's teardown passes out (gc.freeze)
    assert result.stdout.split() == ["[]", "frozen"]
    assert "written 1, skipped 0, failed 0" in result.stderr
    assert (tmp_path / "o.jpg").exists()


@pytest.mark.parametrize("kernel", ["sobel-x", "box-blur", "0 1 0; 1 -4 1; 0 1 0",
                                    "gaussian:sigma=1"])
def test_jpeg_filtered_over_its_own_memory_is_the_same(tmp_path, monkeypatch, kernel):
    # a JPEG decoded into RGBX is filtered into that memory, channel by channel;
    # --verify keeps the input, so it takes a fresh output: the files must agree.
    # Tiles of a few rows: each is written while the next still reads above it
    from imgconv.core import strategies

    monkeypatch.setattr(strategies, "TILE_BYTES", 64)
    src = tmp_path / "in.jpg"
    crop("astronaut.png", 64).save(src, quality=90)
    plain, kept = tmp_path / "plain.jpg", tmp_path / "kept.jpg"
    assert invoke("apply", src, "-k", kernel, "-o", plain).exit_code == 0
    result = invoke("apply", src, "-k", kernel, "-o", kept, "--verify")
    assert result.exit_code == 0, result.output
    assert plain.read_bytes() == kept.read_bytes()
    # and both are the filter of the decoded pixels (PNG out: nothing lost on the way)
    png = tmp_path / "out.png"
    assert invoke("apply", src, "-k", kernel, "-o", png, "--output-map", "clip").exit_code == 0
    with Image.open(src) as im:
        pixels = np.asarray(im).astype(np.float64)
    from imgconv.kernels import resolve

    weights = np.asarray(resolve(kernel).weights, dtype=np.float64) if ";" not in kernel else (
        np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64))
    expected = np.stack([ndi.correlate(pixels[:, :, c], weights, mode="reflect")
                         for c in range(3)], axis=2)
    assert_within_one_level(np.asarray(Image.open(png)), np.clip(np.rint(expected), 0, 255))


def test_an_output_that_cannot_be_written_is_named_not_the_input(gray_png, tmp_path, monkeypatch):
    from imgconv import batch

    def refuse(path, write, *, overwrite):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(batch.job, "write_atomic", refuse)
    out = tmp_path / "ro" / "x.png"
    result = invoke("apply", gray_png, "-k", "sobel", "-o", out)
    assert result.exit_code == 1
    assert f"error: {out}: cannot write (Permission denied)" in result.stderr
    assert f"error: {gray_png}" not in result.stderr

    def no_folder(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", no_folder)
    result = invoke("apply", gray_png, "-k", "sobel", "-o", out)
    assert result.exit_code == 1
    assert (f"error: {out}: cannot create the folder {out.parent} (Permission denied)"
            in result.stderr)


def test_help_shows_the_defaults_that_rich_could_read_as_markup():
    result = runner.invoke(app, ["apply", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for default in ("[default: {stem}{ext}]", "[default: the input's]",
                    "[default: number of CPUs]", "[default: IMGCONV_THREADS, else all",
                    "[default: IMGCONV_JIT, else off]", "pip install 'imgconv[jit]'"):
        assert default in text, default
