"""apply --tiles writes the files --no-tiles writes, and the tiled path's own options (issue 16).

Each equality case runs the command twice on one input: ``--tiles`` with a tiny
``--chunk`` (7 or 16 pixels on ~40x50 images, so every halo crosses several
chunk edges) and ``--no-tiles`` (the in-memory path, the oracle), then reads
both outputs back. Which path ran is seen in the files themselves: the tiled
path writes a tiled BigTIFF and a version-2 ``.npy`` header, the in-memory one
a classic TIFF (Pillow or tifffile) and ``numpy.save``'s version-1 header.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("dask.array", reason="needs the scale extra")
tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

from imgconv.cli import app  # noqa: E402

runner = CliRunner()

#: An asymmetric 3x4 kernel with distinct taps (sum 0.69), so a misplaced tap or a wrong
#: border shows. The weights are sevenths, ninths and elevenths: on integer pixels the exact
#: result is a multiple of 1/693, never within 7e-4 of a rounding boundary (k + 1/2), so the
#: two paths' float32 sums (whose order may differ) round to the same 8-bit value. (Decimal
#: weights such as 0.01 hit k + 1/2 exactly on ~1% of the pixels: off by one there.)
ASYM = "1/7 2/9 -1/11 1/9; -2/7 1/11 3/9 -1/7; 2/11 1/7 -1/9 1/11"
#: For 16-bit values, where float32 has no bits to spare for ASYM's margin: sixteenths,
#: summed exactly in float32 on either path, so their exact ties round alike
DYADIC = "1/16 3/16 -2/16 1/16; -4/16 1/16 5/16 -1/16; 2/16 1/16 -3/16 1/16"


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """The inputs, written once: TIFFs (tiled and striped) and .npy, 8- and 16-bit, RGBA."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(16)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (41, 47), dtype=np.uint8)
    alpha = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    alpha[:, :12] = 0  # a transparent band and a fully opaque one
    alpha[:, -12:] = 255
    paths = {name: folder / name for name in (
        "rgb-tiled.tif", "rgb-striped.tif", "gray-tiled.tif", "rgba.tif", "gray16.tif",
        "rgb16.tif", "gray.npy", "rgb.npy")}
    tifffile.imwrite(paths["rgb-tiled.tif"], rgb, photometric="rgb", tile=(16, 16))
    tifffile.imwrite(paths["rgb-striped.tif"], rgb, photometric="rgb", rowsperstrip=7)
    tifffile.imwrite(paths["gray-tiled.tif"], gray, photometric="minisblack", tile=(16, 16))
    tifffile.imwrite(paths["rgba.tif"], np.dstack([rgb, alpha]), photometric="rgb",
                     extrasamples=["unassalpha"], tile=(16, 16))
    tifffile.imwrite(paths["gray16.tif"], rng.integers(0, 65536, (40, 50), dtype=np.uint16),
                     photometric="minisblack", tile=(16, 16))
    tifffile.imwrite(paths["rgb16.tif"], rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16),
                     photometric="rgb", rowsperstrip=9)
    np.save(paths["gray.npy"], gray)
    np.save(paths["rgb.npy"], rgb)
    # layer weights: a (kH, kW, C_in) filter, and PyTorch's (C_out, C_in, kH, kW) with a bias
    np.save(folder / "filter.npy", rng.standard_normal((3, 5, 3)) / 8)
    np.save(folder / "conv.npy", rng.standard_normal((4, 3, 3, 3)) / 4)
    np.save(folder / "bias.npy", np.array([0.5, -1.0, 2.0, 0.0]))
    (folder / "docs.yaml").write_text(
        "stages:\n"
        "  - kernel: gaussian:sigma=1\n"
        "  - kernel: sobel\n"
        "    stride: 2\n"
        "  - activation: relu\n"
        "  - pool: {op: max, size: 2}\n"
        "output: normalize\n")
    (folder / "cnn.yaml").write_text(
        "stages:\n"
        "  - conv: {weights: conv.npy, bias: bias.npy, padding: 1, pad_mode: constant}\n"
        "  - activation: relu\n"
        "  - pool: {op: avg, size: 3, stride: 2, ceil_mode: true}\n"
        "  - kernel: box:3\n"
        "    pad_mode: wrap\n"
        "    dilation: 2\n")
    paths["folder"] = folder
    return paths


def read(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".zarr":
        return zarr.open_array(path, mode="r")[:]
    return tifffile.imread(path)


def streamed(path: Path) -> bool:
    """Whether the tiled path wrote ``path`` (a tiled BigTIFF, or a version-2 .npy header)."""
    if path.suffix == ".npy":
        return path.read_bytes()[6:7] == b"\x02"
    with tifffile.TiffFile(path) as tif:
        return tif.is_bigtiff and tif.pages.first.is_tiled


def both_paths(tmp_path: Path, source: Path, ext: str, *args: object,
               chunk: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """(--tiles output, --no-tiles output) of ``apply source *args``, read back."""
    tiled, memory = tmp_path / f"tiled{ext}", tmp_path / f"memory{ext}"
    result = invoke("apply", source, *args, "--tiles", "--chunk", chunk, "-o", tiled)
    assert result.exit_code == 0, result.output
    result = invoke("apply", source, *args, "--no-tiles", "-o", memory)
    assert result.exit_code == 0, result.output
    assert streamed(tiled) and not streamed(memory)
    return read(tiled), read(memory)


def assert_same(tiled: np.ndarray, memory: np.ndarray, off_by_one: int = 0) -> None:
    """Equal, floats to their last bits; ``off_by_one`` integer values may differ by 1."""
    assert tiled.shape == memory.shape
    assert tiled.dtype == memory.dtype
    if memory.dtype.kind == "f":  # float32 sums over the same taps; allow their last bit
        np.testing.assert_allclose(tiled, memory, rtol=1e-6,
                                   atol=1e-6 * max(1.0, float(np.abs(memory).max())))
    elif off_by_one:
        diff = np.abs(tiled.astype(np.int64) - memory)
        assert diff.max() <= 1 and np.count_nonzero(diff) <= off_by_one, np.argwhere(diff)
    else:
        np.testing.assert_array_equal(tiled, memory)
    assert memory.min() != memory.max()  # not a blank image that any path would match


# --- --tiles equals --no-tiles ----------------------------------------------------------------

CASES = [
    # every border mode, an asymmetric 3x4 kernel, 8-bit TIFF out
    *(pytest.param("rgb-tiled.tif", ".tif", ["-k", ASYM, "--pad-mode", mode,
                                             "--output-map", "offset"], id=f"pad-{mode}")
      for mode in ("reflect", "mirror", "nearest", "wrap")),
    pytest.param("rgb-striped.tif", ".tif", ["-k", ASYM, "--pad-mode", "constant",
                                             "--cval", "200"], id="pad-constant-cval"),
    # geometry: padding, stride, dilation (float .npy out: the values themselves)
    pytest.param("gray.npy", ".npy", ["-k", ASYM, "--padding", "valid"], id="padding-valid"),
    pytest.param("gray.npy", ".npy", ["-k", ASYM, "--padding", "full", "--pad-mode", "wrap"],
                 id="padding-full-wrap"),
    pytest.param("gray-tiled.tif", ".tif", ["-k", ASYM, "--padding", "0,2,5,1", "--pad-mode",
                                            "mirror", "--output-map", "offset"],
                 id="padding-explicit"),
    pytest.param("rgb.npy", ".npy", ["-k", ASYM, "--padding", "3,1", "--stride", "3,2"],
                 id="stride"),
    pytest.param("gray.npy", ".npy", ["-k", ASYM, "--dilation", "2,3", "--stride", "2",
                                      "--pad-mode", "constant", "--cval", "9"], id="dilation"),
    # activation and pooling
    pytest.param("rgb-tiled.tif", ".tif", ["-k", "sobel-x", "--activation", "relu", "--pool",
                                           "max", "--pool-size", "3", "--pool-stride", "2",
                                           "--pool-padding", "1", "--pool-ceil"],
                 id="relu-maxpool-ceil"),
    pytest.param("gray.npy", ".npy", ["-k", ASYM, "--pool", "avg", "--pool-size", "3",
                                      "--pool-stride", "2", "--pool-padding", "1",
                                      "--pool-ceil", "--no-pool-count-pad"],
                 id="avgpool-ceil"),
    pytest.param("rgb-striped.tif", ".tif", ["-k", "laplacian", "--activation", "relu",
                                             "--pool", "max", "--pool-size", "2,3",
                                             "--pool-dilation", "2"], id="maxpool-dilated"),
    # output maps, 8-bit out (normalize takes the whole result's range in a first pass)
    *(pytest.param("rgb-tiled.tif", ".tif", ["-k", "sobel-x", "--output-map", how],
                   id=f"map-{how}") for how in ("clip", "abs", "offset", "normalize")),
    # chains whose halos add up past the chunk: 6 + 1 + 4 rows beyond a 7-pixel chunk
    pytest.param("rgb-tiled.tif", ".tif", ["-k", "gaussian:sigma=2", "-k", "sobel-x", "-k",
                                           "box:9", "--pad-mode", "wrap", "--output-map",
                                           "normalize"], id="chain-wrap"),
    pytest.param("gray.npy", ".npy", ["-k", "box:5", "-k", "motion-blur", "-k", ASYM,
                                      "--stride", "2", "--pad-mode", "mirror"],
                 id="chain-strided"),
    # pipeline files: the docs' example, and a CNN layer from .npy weights and bias
    pytest.param("rgb-striped.tif", ".tif", ["--pipeline", "{folder}/docs.yaml"],
                 id="pipeline-docs"),
    pytest.param("rgb-tiled.tif", ".npy", ["--pipeline", "{folder}/cnn.yaml"],
                 id="pipeline-cnn"),
    # -k weights.npy
    pytest.param("rgb-tiled.tif", ".tif", ["-k", "{folder}/filter.npy", "--output-map",
                                           "normalize", "--pad-mode", "nearest"],
                 id="weights-filter"),
    pytest.param("rgb.npy", ".npy", ["-k", "{folder}/conv.npy", "--bias", "{folder}/bias.npy",
                                     "--padding", "1", "--pad-mode", "constant"],
                 id="weights-conv2d"),
    # alpha: the policies, one with stride and pooling for alpha to follow
    pytest.param("rgba.tif", ".tif", ["-k", "gaussian:sigma=1.5", "--alpha", "premultiply"],
                 id="alpha-premultiply"),
    pytest.param("rgba.tif", ".tif", ["-k", "sharpen", "--alpha", "copy", "--stride", "2",
                                      "--pool", "max", "--pool-size", "2"], id="alpha-copy"),
    pytest.param("rgba.tif", ".tif", ["-k", "emboss", "--alpha", "drop"], id="alpha-drop"),
    # --gray
    pytest.param("rgb-striped.tif", ".tif", ["-k", ASYM, "--gray"], id="gray-tif"),
    pytest.param("rgb.npy", ".npy", ["-k", "sobel", "--gray"], id="gray-npy"),
    # 16-bit in, 16-bit out
    pytest.param("gray16.tif", ".tif", ["-k", DYADIC, "--pad-mode", "wrap"], id="16bit-gray"),
    pytest.param("rgb16.tif", ".tif", ["-k", "sobel", "--stride", "2"], id="16bit-rgb"),
    # float outputs
    pytest.param("rgb-tiled.tif", ".npy", ["-k", "sobel-y", "--pad-mode", "wrap"],
                 id="float-npy"),
    pytest.param("rgb-striped.tif", ".tif", ["-k", "laplacian", "--depth", "float"],
                 id="float-tif"),
    pytest.param("gray16.tif", ".tif", ["-k", "sobel", "--depth", "float", "--dilation", "3"],
                 id="float-tif-16bit-in"),
]


@pytest.mark.parametrize("source, ext, args", CASES)
def test_tiles_equal_no_tiles(images, tmp_path, source, ext, args):
    args = [a.format(folder=images["folder"]) for a in args]
    tiled, memory = both_paths(tmp_path, images[source], ext, *args)
    # premultiply divides the filtered colour by the filtered alpha, a float32 quotient
    # with no margin to a rounding boundary (as ASYM's sums have): the two paths' last-bit
    # differences may land a value or two on the other side of k + 1/2 (1 of 8,000 here)
    assert_same(tiled, memory, off_by_one=5 if "premultiply" in args else 0)
    if ext == ".npy" or "float" in args:
        assert memory.dtype == np.float32
    else:  # the input's depth: 16-bit stays 16-bit
        assert memory.dtype == (np.uint16 if source.endswith("16.tif") else np.uint8)
    if source == "rgba.tif":
        assert memory.shape[2] == (3 if "drop" in args else 4)


def test_chunk_sizes_agree(images, tmp_path):
    """A chunk the size of the tiles of the input, and one that is not: the same file."""
    args = ["-k", "gaussian:sigma=2", "-k", ASYM, "--pad-mode", "mirror"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    small, memory = both_paths(tmp_path / "a", images["rgb-tiled.tif"], ".tif", *args, chunk=16)
    large, _ = both_paths(tmp_path / "b", images["rgb-tiled.tif"], ".tif", *args, chunk=33)
    assert_same(small, memory)
    assert_same(large, memory)


# --- formats ------------------------------------------------------------------------------------

def test_tif_to_zarr_to_tif_and_npy_to_npy(images, tmp_path):
    store, back = tmp_path / "x.zarr", tmp_path / "back.tif"
    assert invoke("apply", images["rgb-tiled.tif"], "-k", "identity", "-o", store).exit_code == 0
    original = tifffile.imread(images["rgb-tiled.tif"])
    assert read(store).dtype == np.float32
    np.testing.assert_array_equal(read(store), original)
    result = invoke("apply", store, "-k", "identity", "-o", back)
    assert result.exit_code == 0, result.output
    assert read(back).dtype == np.uint8
    np.testing.assert_array_equal(read(back), original)

    out = tmp_path / "g.npy"
    result = invoke("apply", images["gray.npy"], "-k", "identity", "--tiles", "--chunk", 7,
                    "-o", out)
    assert result.exit_code == 0, result.output
    assert streamed(out)
    np.testing.assert_array_equal(np.load(out), np.load(images["gray.npy"]).astype(np.float32))


def test_a_zarr_input_is_not_a_folder_of_inputs(images, tmp_path):
    store = tmp_path / "x.zarr"
    assert invoke("apply", images["gray.npy"], "-k", "identity", "-o", store).exit_code == 0
    result = invoke("apply", store, "-k", "identity", "-o", tmp_path / "y.tif")
    assert result.exit_code == 0, result.output
    assert "sub-folder" not in result.output


def test_compressions_give_readable_files(images, tmp_path):
    expected = None
    for compression in ("none", "deflate", "zstd", "lzw"):
        out = tmp_path / f"{compression}.tif"
        result = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--tiles",
                        "--chunk", 16, "--compression", compression, "-o", out)
        assert result.exit_code == 0, result.output
        with tifffile.TiffFile(out) as tif:
            assert tif.pages.first.compression.name.lower().startswith(
                {"none": "none", "deflate": "adobe_deflate", "zstd": "zstd",
                 "lzw": "lzw"}[compression])
            pixels = tif.asarray()
        if expected is None:
            expected = pixels
        np.testing.assert_array_equal(pixels, expected)  # lossless: the same pixels
    # JPEG is lossy: a smooth image (not sobel's noise) comes back close
    smooth = {}
    for compression in ("jpeg", "none"):
        out = tmp_path / f"smooth-{compression}.tif"
        result = invoke("apply", images["rgb-tiled.tif"], "-k", "gaussian:sigma=3", "--tiles",
                        "--chunk", 16, "--compression", compression, "-o", out)
        assert result.exit_code == 0, result.output
        smooth[compression] = tifffile.imread(out).astype(int)
    assert smooth["jpeg"].shape == smooth["none"].shape
    assert np.abs(smooth["jpeg"] - smooth["none"]).mean() < 4


def test_bad_compression_is_a_usage_error(images, tmp_path):
    out = tmp_path / "o.tif"
    result = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--compression", "zip",
                    "-o", out)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --compression must be one of none, deflate, zstd, lzw, jpeg, got 'zip'"]
    assert not out.exists()


# --- --memory-limit and routing -----------------------------------------------------------------

def test_memory_limit_sizes_are_accepted(images):
    for size in ("512MB", "2GiB", "1.5G", "2048"):
        result = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--memory-limit", size,
                        "-o", "unused.tif", "--dry-run")  # nothing is written
        assert result.exit_code == 0, (size, result.output)
        # 24 KB of float32 fits in all but 2048 bytes
        assert ("tiled: chunks of" in result.output) == (size == "2048"), size


def test_memory_limit_that_is_no_size_is_refused(images, tmp_path):
    result = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--memory-limit", "lots",
                    "-o", tmp_path / "o.tif")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --memory-limit ")
    assert "'lots'" in lines[0]
    assert not (tmp_path / "o.tif").exists()


def test_an_image_past_the_memory_limit_takes_the_tiled_path(images, tmp_path):
    source = images["rgb-striped.tif"]
    plan = invoke("apply", source, "-k", "sobel", "--memory-limit", "1KB", "-o",
                  tmp_path / "x.tif", "--dry-run")
    assert plan.exit_code == 0, plan.output
    assert "tiled: chunks of" in plan.output
    auto, default = tmp_path / "auto.tif", tmp_path / "default.tif"
    result = invoke("apply", source, "-k", "sobel", "--memory-limit", "1KB", "-o", auto)
    assert result.exit_code == 0, result.output
    result = invoke("apply", source, "-k", "sobel", "-o", default)  # 24 KB: in memory
    assert result.exit_code == 0, result.output
    assert streamed(auto) and not streamed(default)
    assert_same(read(auto), read(default))


# --- a bad file, existing outputs --------------------------------------------------------------

def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offsets, counts = tif.pages.first.dataoffsets, tif.pages.first.databytecounts
    if how == "tile-bytes":  # one deflated tile in the middle becomes garbage
        start = offsets[len(offsets) // 2]
        data[start:start + counts[len(offsets) // 2]] = b"\xff" * counts[len(offsets) // 2]
    else:  # the file ends halfway through its tiles
        data = data[:offsets[len(offsets) // 2] + 10]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["tile-bytes", "truncated"])
def test_a_corrupt_tiled_tiff_fails_alone_and_leaves_nothing(images, tmp_path, how):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()  # (see test_the_output_folder_is_created for a folder not yet there)
    rng = np.random.default_rng(5)
    for name in ("bad.tif", "good.tif"):
        tifffile.imwrite(inputs / name, rng.integers(0, 256, (40, 50), dtype=np.uint8),
                         tile=(16, 16), compression="zlib")
    _corrupt(inputs / "bad.tif", how)
    result = invoke("apply", inputs / "bad.tif", inputs / "good.tif", "-k", "sobel", "--tiles",
                    "--chunk", 16, "--jobs", 1, "--out-dir", out)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {inputs / 'bad.tif'}: ")
    assert "Traceback" not in result.output and "internal error" not in result.output
    names = sorted(os.listdir(out))
    assert len(names) == 1 and names[0].startswith("good.")  # no bad.*, no .bad.*.part
    assert streamed(out / names[0])


@pytest.mark.parametrize("tiles", ["--no-tiles", "--tiles"])
def test_the_output_folder_is_created(images, tmp_path, tiles):
    out = tmp_path / "new" / "deeper"
    result = invoke("apply", images["gray-tiled.tif"], "-k", "sobel", tiles, "--out-dir", out)
    assert result.exit_code == 0, result.output
    assert len(list(out.iterdir())) == 1


def _stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("ext", [".tif", ".npy", ".zarr"])
def test_an_existing_output_is_kept_without_overwrite(images, tmp_path, ext):
    # --out-dir: -o with an existing .zarr is test_o_replaces_an_existing_zarr_store's bug
    out, name = tmp_path / "out", f"o{ext}"
    out.mkdir()  # (the tiled path does not make it: test_the_output_folder_is_created)
    first = invoke("apply", images["gray.npy"], "-k", "sobel", "--tiles", "--out-dir", out,
                   "--name", name)
    assert first.exit_code == 0, first.output
    before, stamps = read(out / name), _stamps(out)
    result = invoke("apply", images["gray.npy"], "-k", "box:3", "--tiles", "--out-dir", out,
                    "--name", name)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(out / name) in errors[0]
    assert "already exists" in errors[0] and "--overwrite" in errors[0]
    assert _stamps(out) == stamps  # untouched, and no temporary file or folder beside it
    np.testing.assert_array_equal(read(out / name), before)


def test_overwrite_replaces_a_zarr_store(images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = ["-k", "box:3", "--stride", "2", "--out-dir", out, "--name", "o.zarr"]
    assert invoke("apply", images["gray.npy"], "-k", "sobel", *args[4:]).exit_code == 0
    result = invoke("apply", images["rgb.npy"], *args, "--overwrite")
    assert result.exit_code == 0, result.output
    expected = tmp_path / "expected.npy"
    assert invoke("apply", images["rgb.npy"], *args[:4], "--no-tiles", "-o",
                  expected).exit_code == 0
    assert_same(read(out / "o.zarr"), np.load(expected))  # the new store, not a mix
    assert os.listdir(out) == ["o.zarr"]  # the old store and the temporary one are gone


def test_o_replaces_an_existing_zarr_store(images, tmp_path):
    out = tmp_path / "o.zarr"
    assert invoke("apply", images["gray.npy"], "-k", "sobel", "-o", out).exit_code == 0
    result = invoke("apply", images["gray.npy"], "-k", "box:3", "-o", out)
    assert result.exit_code == 1, result.output
    assert "already exists" in result.output
    result = invoke("apply", images["gray.npy"], "-k", "box:3", "--overwrite", "-o", out)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("how", ["-o", "--out-dir"])
def test_a_folder_that_is_no_zarr_store_is_never_replaced(images, tmp_path, how):
    out = tmp_path / "photos.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    where = ["-o", out] if how == "-o" else ["--out-dir", tmp_path, "--name", out.name]
    for extra in ([], ["--overwrite"]):
        result = invoke("apply", images["gray.npy"], "-k", "sobel", *extra, *where)
        assert result.exit_code in (1, 2), result.output  # -o: a usage error, up front
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(out) in errors[0]
        assert os.listdir(out) == ["keep.txt"]
        assert (out / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["photos.zarr"]


# --- found by the new-user run -------------------------------------------------------------

def test_standard_output_gets_the_whole_small_result(images, tmp_path):
    piped = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--tiles", "--chunk", 7,
                   "-o", "-", "--format", "png")
    assert piped.exit_code == 0, piped.output
    assert not Path("-").exists()
    assert invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--no-tiles", "-o",
                  tmp_path / "o.png").exit_code == 0
    assert piped.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    from io import BytesIO

    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(BytesIO(piped.stdout_bytes))),
                                  np.asarray(Image.open(tmp_path / "o.png")))
    zarr_out = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "-o", "-",
                      "--format", "zarr")
    assert zarr_out.exit_code == 2 and "cannot go to standard output" in zarr_out.output


def test_format_names_the_tiled_output(images, tmp_path):
    out = tmp_path / "no-extension"
    result = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--tiles", "-o", out,
                    "--format", "zarr")
    assert result.exit_code == 0, result.output
    assert zarr.open_array(out, mode="r").shape == (40, 50, 3)


def test_premultiplied_alpha_is_divided_out_on_both_paths(tmp_path):
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    rgba[:, :20, 3] = 128
    rgba[:, :, :3] = (rgba[:, :, :3].astype(int) * rgba[:, :, 3:] // 255).astype(np.uint8)
    path = tmp_path / "assoc.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["assocalpha"], tile=(16, 16))
    outs = []
    for tiles in ("--tiles", "--no-tiles"):
        outs.append(tmp_path / f"o{tiles}.png")
        result = invoke("apply", path, "-k", "box:3", tiles, "--chunk", 7, "-o", outs[-1])
        assert result.exit_code == 0, result.output
    from PIL import Image

    a, b = (np.asarray(Image.open(p)) for p in outs)
    np.testing.assert_array_equal(a, b)


def test_a_float_colour_tiff_is_read_whole_too(tmp_path):
    path = tmp_path / "f.tif"
    values = np.random.default_rng(4).random((20, 30, 3)).astype(np.float32) * 255
    tifffile.imwrite(path, values, photometric="rgb")  # Pillow reads no float colour
    outs = [tmp_path / "t.tif", tmp_path / "m.tif"]
    for tiles, out in zip(("--tiles", "--no-tiles"), outs, strict=True):
        result = invoke("apply", path, "-k", "box:3", tiles, "-o", out, "--depth", "float")
        assert result.exit_code == 0, result.output
    np.testing.assert_allclose(tifffile.imread(outs[0]), tifffile.imread(outs[1]), rtol=1e-6)


def test_without_the_scale_extra_a_tiled_input_says_what_to_install(images, tmp_path,
                                                                    monkeypatch):
    from imgconv.batch import tiled

    monkeypatch.setattr(tiled, "has_scale", lambda: False)
    result = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--tiles", "-o",
                    tmp_path / "o.tif")
    assert result.exit_code == 1
    assert "pip install 'imgconv[scale]'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.tif").exists()


def test_dry_run_says_what_the_tiled_run_would_refuse(images, tmp_path):
    result = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--tiles", "-o",
                    tmp_path / "o.png", "--max-pixels", 100, "--dry-run")
    assert result.exit_code == 0
    assert "would fail" in result.output and "too large to write as png" in result.output


@pytest.mark.parametrize("compression", ["zstd", "deflate", "lzw"])
def test_compression_applies_to_a_tiff_written_whole(images, tmp_path, compression):
    out = tmp_path / "o.tif"
    result = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--no-tiles", "-o", out,
                    "--compression", compression)
    assert result.exit_code == 0, result.output
    with tifffile.TiffFile(out) as tif:
        written = tif.pages.first.compression.name.lower()
    assert written == {"deflate": "adobe_deflate"}.get(compression, compression)
    plain = tmp_path / "plain.tif"
    assert invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--no-tiles", "-o",
                  plain).exit_code == 0
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(plain))


# --- found by the adversarial run ------------------------------------------------------------

def test_overwrite_never_replaces_a_store_that_holds_an_input(images, tmp_path):
    store = tmp_path / "st.zarr"
    assert invoke("apply", images["rgb.npy"], "-k", "identity", "-o", store).exit_code == 0
    inside = store / "img.tif"
    inside.write_bytes(images["rgb-tiled.tif"].read_bytes())
    result = invoke("apply", inside, "-k", "sobel", "-o", store, "--overwrite")
    assert result.exit_code == 1 and "holds an input" in result.output
    assert inside.exists()


def test_a_zarr_group_or_a_file_named_zarr_is_never_replaced(images, tmp_path):
    group = tmp_path / "g.zarr"
    zarr.open_group(group, mode="w").create_array("labels", shape=(2, 2), dtype="u1")
    plain = tmp_path / "f.zarr"
    plain.write_text("important")
    for target, why in ((group, "zarr group"), (plain, "not a zarr store")):
        result = invoke("apply", images["rgb.npy"], "-k", "sobel", "-o", target, "--overwrite")
        assert result.exit_code == 1 and why in result.output, result.output
    assert (group / "labels").exists() and plain.read_text() == "important"


def test_a_fifo_named_like_a_tiff_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    for extra in ((), ("--tiles",), ("--dry-run",)):
        result = invoke("apply", fifo, "-k", "sobel", "-o", tmp_path / "o.tif", *extra)
        assert "FIFO" in result.output or "fifo" in result.output, result.output


def test_manifest_hashes_a_zarr_input_and_stdin_reaches_a_zarr_output(images, tmp_path):
    store = tmp_path / "in.zarr"
    assert invoke("apply", images["rgb.npy"], "-k", "identity", "-o", store).exit_code == 0
    result = invoke("apply", store, "-k", "sobel", "-o", tmp_path / "o.tif", "--manifest",
                    tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    import json

    entry = json.loads((tmp_path / "m.json").read_text())["inputs"][0]
    assert len(entry["sha256"]) == 64
    piped = runner.invoke(app, ["apply", "-", "-k", "sobel", "-o", str(tmp_path / "s.zarr")],
                          input=images["rgb-tiled.tif"].read_bytes())
    assert piped.exit_code == 0, piped.output
    assert zarr.open_array(tmp_path / "s.zarr", mode="r").shape == (40, 50, 3)


@pytest.mark.parametrize("kind", ["rgbx", "orientation-6", "big-endian-16"])
def test_tiff_variants_equal_on_both_paths(tmp_path, kind):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    path = tmp_path / f"{kind}.tif"
    if kind == "rgbx":  # an extra sample that is not alpha: dropped
        tifffile.imwrite(path, np.dstack([rgb, rgb[:, :, 0]]), photometric="rgb",
                         extrasamples=["unspecified"], tile=(16, 16))
    elif kind == "orientation-6":  # turned upright on both paths
        tifffile.imwrite(path, rgb, photometric="rgb", tile=(16, 16),
                         extratags=[(274, "H", 1, 6, True)])
    else:  # Pillow's I;16B read at full depth
        tifffile.imwrite(path, rng.integers(0, 65536, (37, 29), dtype=np.uint16),
                         byteorder=">")
    outs = []
    for tiles in ("--tiles", "--no-tiles"):
        outs.append(tmp_path / f"o{tiles}.tif")
        result = invoke("apply", path, "-k", DYADIC, tiles, "--chunk", 7, "-o", outs[-1],
                        "--depth", "float")
        assert result.exit_code == 0, result.output
    a, b = (tifffile.imread(p) for p in outs)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_library_warnings_on_the_tiled_path_are_notes(tmp_path):
    values = np.random.default_rng(6).random((40, 50)).astype(np.float32) * 255
    values[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", values)
    result = invoke("apply", tmp_path / "nan.npy", "-k", "sobel-x", "--tiles", "--chunk", 16,
                    "--output-map", "clip", "-o", tmp_path / "o.png")
    assert result.exit_code == 0
    assert "RuntimeWarning" not in result.output and "warning: " in result.output


def test_chunks_too_large_for_the_memory_limit_are_refused(images, tmp_path):
    result = invoke("apply", images["rgb-tiled.tif"], "-k", "sobel", "--tiles", "--chunk",
                    4096, "--memory-limit", "1MB", "-o", tmp_path / "o.tif")
    assert result.exit_code == 1 and "use a smaller --chunk" in result.output


# --- found by the code review ----------------------------------------------------------------

def test_a_turned_tiff_keeps_its_chunk_sides(tmp_path):
    from imgconv.tiled import files, ops

    path = tmp_path / "turned.tif"
    tifffile.imwrite(path, np.zeros((257, 45), np.uint8), extratags=[(274, "H", 1, 3, True)])
    lazy = ops.correlate(files.read(path, chunk=(256, 256)).pixels, [[1.0, 2.0]])
    assert lazy.numblocks == (2, 1)  # not 257 one-row bands from the edge's leftover chunk


def test_clipping_of_a_one_pixel_image_is_noted_on_both_paths(tmp_path):
    np.save(tmp_path / "one.npy", np.full((1, 1), 200, np.uint8))
    notes = []
    for tiles in ("--tiles", "--no-tiles"):
        result = invoke("apply", tmp_path / "one.npy", "-k", "laplacian", "--pad-mode",
                        "constant", tiles, "-o", tmp_path / f"o{tiles}.png")
        assert result.exit_code == 0, result.output
        notes.append([line for line in result.output.splitlines() if "clipped" in line])
    assert notes[0] == notes[1] and notes[0]


def test_save_with_alpha_needs_a_channel_for_it(tmp_path):
    import imgconv.tiled

    with pytest.raises(ValueError, match="alpha"):
        imgconv.tiled.save(np.zeros((4, 4), np.uint8), tmp_path / "a.tif", alpha=True)


@pytest.fixture
def bad_next_page(tmp_path) -> Path:
    """A tiled TIFF whose first page is whole and whose next-page offset lies past the end."""
    import struct

    path = tmp_path / "bad-next.tif"
    rng = np.random.default_rng(3)
    tifffile.imwrite(path, rng.integers(0, 256, (70, 90), dtype=np.uint8), tile=(32, 32))
    data = bytearray(path.read_bytes())
    first = struct.unpack("<I", data[4:8])[0]
    entries = struct.unpack("<H", data[first : first + 2])[0]
    at = first + 2 + 12 * entries
    data[at : at + 4] = struct.pack("<I", len(data) + 1000)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("tiles", ["--tiles", "--no-tiles"])
def test_a_corrupt_later_page_is_a_note_not_an_error(bad_next_page, tmp_path, tiles):
    # Pillow raised TypeError counting the frames (an "internal error"); tifffile's
    # log line reached stderr bare. The first page is whole: it is filtered, and
    # what is wrong with the file is a warning line of that file (-q silences it)
    out = tmp_path / "out.tif"
    result = invoke("apply", bad_next_page, "-k", "sobel", tiles, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.exists()
    lines = result.output.splitlines()
    notes = [line for line in lines if line.startswith("warning: ")]
    assert any(("invalid page offset" in line or "later frames cannot be read" in line)
               and "bad-next.tif" in line for line in notes), lines
    assert all(line.startswith(("warning: ", "written ")) or "->" in line for line in lines), lines
    quiet = invoke("apply", bad_next_page, "-k", "sobel", tiles, "-o", out, "--overwrite", "-q")
    assert quiet.exit_code == 0 and quiet.output == "", quiet.output


def test_tifffile_logs_become_notes_only_inside_a_files_block():
    import logging

    from imgconv.notes import warnings_as_notes

    logger = logging.getLogger("tifffile")
    before = (list(logger.handlers), logger.propagate)
    notes: list[str] = []
    with warnings_as_notes("a.tif", notes):
        logger.warning("<tifffile.TiffPages @8> invalid page offset 1")
    assert notes == ["a.tif: tifffile: invalid page offset 1"]
    assert (list(logger.handlers), logger.propagate) == before  # the program's own again


def _patch_tag(path: Path, tag: int, value: int) -> None:
    """Overwrite one entry's value in the first directory of a little-endian classic TIFF."""
    import struct

    data = bytearray(path.read_bytes())
    first = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, first)[0]):
        at = first + 2 + 12 * i
        entry, kind = struct.unpack_from("<HH", data, at)
        if entry == tag:
            struct.pack_into("<H" if kind == 3 else "<I", data, at + 8, value)
            break
    else:
        raise AssertionError(f"no tag {tag}")
    path.write_bytes(bytes(data))


def _corrupt_header(tmp_path: Path, case: str) -> Path:
    import struct

    rng = np.random.default_rng(5)
    gray16 = rng.integers(0, 65536, (24, 32), dtype=np.uint16)
    if case.endswith(".npy"):
        path = tmp_path / case
        if case == "empty.npy":
            path.write_bytes(b"")
            return path
        shape = "(24, 32, 3" if case == "unclosed.npy" else "(4611686018427387904, 4), "
        header = "{'descr': '|u1', 'fortran_order': False, 'shape': " + shape + "}"
        header += " " * (64 - (10 + len(header) + 1) % 64) + "\n"
        path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header))
                         + header.encode() + bytes(24 * 32 * 3))
        return path
    path = tmp_path / f"{case}.tif"
    if case == "width0":
        tifffile.imwrite(path, gray16)
        _patch_tag(path, 256, 0)
    elif case == "tile-offsets0":
        tifffile.imwrite(path, gray16, tile=(16, 16), compression="lzw")
        _patch_tag(path, 324, 0)
    elif case == "one-entry":
        tifffile.imwrite(path, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
                         compression="zlib", rowsperstrip=8)
        data = bytearray(path.read_bytes())
        struct.pack_into("<H", data, struct.unpack_from("<I", data, 4)[0], 1)
        path.write_bytes(bytes(data))
    elif case == "rows-per-strip0":
        tifffile.imwrite(path, gray16)
        _patch_tag(path, 278, 0)
    return path


@pytest.mark.parametrize("case", ["width0", "tile-offsets0", "one-entry", "rows-per-strip0",
                                  "unclosed.npy", "empty.npy", "huge-shape.npy"])
@pytest.mark.parametrize("tiles", ["--tiles", "--no-tiles"])
def test_corrupt_headers_and_segments_are_one_line_each(tmp_path, case, tiles):
    # each gave an "internal error" (IndexError, AttributeError, ZeroDivisionError,
    # TokenError, EOFError) or a raw numpy warning on one path or the other (an
    # adversarial run's findings); a file that decodes after all is fine too
    path = _corrupt_header(tmp_path, case)
    out = tmp_path / "out.tif"
    result = invoke("apply", path, "-k", "sobel", tiles, "-o", out)
    assert result.exit_code in (0, 1), result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    lines = result.output.splitlines()
    assert all(line.startswith(("error: ", "warning: ", "written ")) or " -> " in line
               for line in lines), lines
    if result.exit_code:
        assert sum(line.startswith("error: ") for line in lines) == 1, lines
        assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_an_array_of_one_channel_is_written_as_a_tiled_tiff(tmp_path):
    # (H, W, 1): one sample, which tifffile refused to write as "contig" planes
    path = tmp_path / "one.npy"
    np.save(path, np.random.default_rng(2).integers(0, 256, (24, 32, 1), dtype=np.uint8))
    tiled, whole = tmp_path / "tiled.tif", tmp_path / "whole.tif"
    for flag, out in (("--tiles", tiled), ("--no-tiles", whole)):
        result = invoke("apply", path, "-k", "sobel", flag, "-o", out)
        assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(tifffile.imread(tiled).squeeze(), tifffile.imread(whole))


def _store(path: Path) -> Path:
    pixels = np.random.default_rng(4).integers(0, 256, (64, 64), dtype=np.uint8)
    z = zarr.open_array(path, mode="w", shape=pixels.shape, chunks=(32, 32), dtype=pixels.dtype)
    z[:] = pixels
    return path


@pytest.mark.parametrize("inside", ["c/0/0", "zarr.json"])
def test_an_output_inside_a_zarr_input_is_refused_even_with_overwrite(tmp_path, inside):
    # (regression: -o in.zarr/c/0/0 --overwrite replaced one of the input's chunks)
    store = _store(tmp_path / "in.zarr")
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    for flag in ("--tiles", "--no-tiles"):
        result = invoke("apply", store, "-k", "sobel", "-o", store / inside, "--format", "npy",
                        "--overwrite", flag)
        assert result.exit_code == 1, result.output
        assert "is inside the input" in result.output
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("fifo", ["c/0/0", "zarr.json"])
def test_a_fifo_inside_a_zarr_store_is_refused_not_waited_on(tmp_path, imgconv_script, fifo):
    # (regression: the read blocked in zarr's threads, where SIGTERM did not reach it)
    store = _store(tmp_path / "in.zarr")
    (store / fifo).unlink()
    os.mkfifo(store / fifo)
    for flag in ("--tiles", "--no-tiles"):
        done = subprocess.run([imgconv_script, "apply", str(store), "-k", "sobel", "-o",
                               str(tmp_path / "out.npy"), flag], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 1, done.stderr
        assert "a FIFO, not a regular file" in done.stderr
        assert not (tmp_path / "out.npy").exists()
