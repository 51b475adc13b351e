"""CNN layers (issue 18): PyTorch-exact pooling in stages, files and the command line;
weights from .npy, bias, stack banks, many maps; against loop references and, when it is
installed, PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reference import pool_loop
from typer.testing import CliRunner

from imgconv.cli import app
from imgconv.pipeline import Pipeline

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8)).save(path)
    return path


# --- pooling as PyTorch does it, in stages, pipeline files and flags -----------------------

def test_pool_settings_reach_the_stage():
    pipeline = Pipeline.from_options(["identity"], pool="max", pool_size="3", pool_stride="2",
                                     pool_padding="1", pool_dilation="2", pool_ceil=True)
    stage = pipeline.stages[-1]
    assert (stage.padding, stage.dilation, stage.ceil_mode) == ((1, 1), (2, 2), True)
    x = np.random.default_rng(0).random((9, 11))
    out = pipeline.run(x)
    expected = pool_loop(x, (3, 3), (2, 2), "max", (1, 1), (2, 2), True)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert pipeline.shapes((9, 11))[-1] == out.shape


def test_pipeline_file_pool_keys(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("stages:\n  - kernel: identity\n"
                    "  - pool: {op: avg, size: 2, padding: 1, ceil_mode: true,"
                    " count_include_pad: false}\n")
    stage = Pipeline.from_yaml(path).stages[-1]
    assert (stage.padding, stage.ceil_mode, stage.count_include_pad) == ((1, 1), True, False)
    described = Pipeline.from_yaml(path).to_dict()
    assert described["stages"][1]["pool"]["ceil_mode"] is True
    assert Pipeline.from_dict(described).to_dict() == described


@pytest.mark.parametrize(("pool", "message"), [
    ("{op: max, size: 2, padding: 2}", "pool padding must be at most half of pool size"),
    ("{op: avg, size: 2, dilation: 2}", "pool dilation applies to pool op max only"),
    ("{op: max, size: 2, ceil_mode: 1}", "pool ceil_mode must be true or false"),
    ("{op: max, size: 2, ceil: true}", "unknown key 'ceil' in pool (did you mean ceil_mode?)"),
])
def test_pipeline_file_pool_errors_use_its_keys(tmp_path, pool, message):
    path = tmp_path / "p.yaml"
    path.write_text(f"stages:\n  - kernel: identity\n  - pool: {pool}\n")
    from imgconv.errors import UsageError

    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("?)", r"\?\)")):
        Pipeline.from_yaml(path)


def test_pool_flags_and_dry_run_formula(small, tmp_path):
    out = tmp_path / "o.png"
    args = ["apply", small, "-k", "identity", "--pool", "max", "--pool-size", "3",
            "--pool-stride", "2", "--pool-padding", "1", "--pool-dilation", "2", "--pool-ceil",
            "-o", out]
    result = invoke(*args, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "stage 2: max pool 3x3, stride 2x2, padding 1x1 (-inf), dilation 2x2, ceil_mode" \
        in result.stdout
    assert "rows    ceil((9+2*1-(2*(3-1)+1))/2)+1 = 4" in result.stdout
    assert "columns ceil((11+2*1-(2*(3-1)+1))/2)+1 = 5" in result.stdout
    assert invoke(*args, "--format", "npy", "-o", tmp_path / "o.npy").exit_code == 0
    assert np.load(tmp_path / "o.npy").shape == (4, 5)


def test_dry_run_says_when_ceil_mode_drops_a_window(small, tmp_path):
    result = invoke("apply", small, "-k", "identity", "--pool", "avg", "--pool-size", "2",
                    "--pool-padding", "1", "--pool-ceil", "--no-pool-count-pad",
                    "-o", tmp_path / "o.png", "--dry-run")
    assert "padding 1x1 (0, not counted), ceil_mode" in result.stdout
    assert "rows    ceil((9+2*1-2)/2)+1-1 = 5 (the last window would start in the padding)" \
        in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--pool-ceil"], "--pool-ceil needs --pool max|avg"),
    (["--pool", "avg", "--pool-size", "2", "--pool-dilation", "2"],
     "--pool-dilation applies to --pool max only"),
    (["--pool", "max", "--pool-size", "2", "--pool-padding", "2"],
     "--pool-padding must be at most half of --pool-size"),
    (["--pool", "max", "--pool-size", "2", "--pool-padding", "-1"], "--pool-padding must be >= 0"),
])
def test_pool_flag_errors(small, tmp_path, args, message):
    result = invoke("apply", small, "-k", "identity", *args, "-o", tmp_path / "o.png")
    assert result.exit_code == 2
    assert message in result.stderr


def test_check_compares_padded_pooling_with_its_reference(small):
    result = invoke("check", small, "-k", "sobel-x", "--pool", "avg", "--pool-size", "3",
                    "--pool-padding", "1", "--pool-ceil", "--pool-stride", "2")
    assert result.exit_code == 0, result.output


# --- weights from .npy, bias, stack banks, layers that stack ------------------------------

def _conv_loop(x, w, b, pad, stride):
    """A PyTorch conv2d (zero padding) of an (H, W, C_in) image with (C_out, C_in, kH, kW)
    weights, by the loop reference."""
    from reference import correlate_loop

    maps = [sum(correlate_loop(x[:, :, c], w[o, c], (pad,) * 4, (stride,) * 2)
                for c in range(w.shape[1])) + b[o] for o in range(w.shape[0])]
    return np.stack(maps, axis=-1)


def _pool_loop(x, *args, **kwargs):
    return np.stack([pool_loop(x[:, :, c], *args, **kwargs) for c in range(x.shape[2])], -1)


@pytest.fixture
def rgb(tmp_path: Path) -> Path:
    path = tmp_path / "rgb.png"
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (21, 23, 3), dtype=np.uint8)).save(path)
    return path


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64)


@pytest.mark.parametrize("shape", [(3, 3), (3, 3, 3), (4, 3, 3, 3), (2, 3, 1, 2)])
def test_weights_file_shapes(tmp_path, rgb, shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    result = invoke("apply", rgb, "-k", tmp_path / "w.npy", "--padding", "1", "--pad-mode",
                    "constant", "-o", tmp_path / "o.npy")
    assert result.exit_code == 0, result.output
    out = np.load(tmp_path / "o.npy")
    x = _pixels(rgb)
    if len(shape) == 2:  # one kernel, each channel alone
        expected = _conv_loop(x, np.stack([np.stack([w] * 3)] * 3) * np.eye(3)[:, :, None, None],
                              np.zeros(3), 1, 1)
    elif len(shape) == 3:
        expected = _conv_loop(x, np.transpose(w, (2, 0, 1))[None], [0.0], 1, 1)[:, :, 0]
    else:
        expected = _conv_loop(x, w, np.zeros(shape[0]), 1, 1)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(("bias", "expected"), [("0.5", [0.5] * 3), ("1,2,3", [1, 2, 3]),
                                                ("b.npy", [-1, 0, 4])])
def test_bias_forms(tmp_path, rgb, bias, expected):
    np.save(tmp_path / "w.npy", np.zeros((3, 3, 1, 1)))
    np.save(tmp_path / "b.npy", np.array([-1.0, 0.0, 4.0]))
    bias = str(tmp_path / bias) if bias.endswith(".npy") else bias
    result = invoke("apply", rgb, "-k", tmp_path / "w.npy", "--bias", bias,
                    "-o", tmp_path / "o.npy")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy")[0, 0], expected)


@pytest.mark.parametrize(("args", "message"), [
    (["-k", "W", "--bias", "1,2"], "--bias has 2 values, but"),
    (["-k", "sobel", "--bias", "1"], "--bias needs one kernel or a stack bank, not bank 'sobel'"),
    (["-k", "W", "-k", "W", "--bias", "1"], "--bias goes with one -k"),
    (["-k", "W", "--bias", "x"], "--bias must be a number"),
    (["-k", "W", "-k", "W"], "stage 2 ({W}) takes 3 channels (C_in), but stage 1 ({W}) "
                             "gives 4 maps (C_out)"),
    (["-k", "{tmp}/five.npy"], "weights must be (kH, kW), (kH, kW, C_in) or PyTorch's"),
    (["-k", "{tmp}/none.npy"], "no such weights file"),
])
def test_weights_and_bias_errors(tmp_path, rgb, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = "w.npy"
    np.save(w, np.zeros((4, 3, 3, 3)))
    np.save(tmp_path / "five.npy", np.zeros((1, 1, 1, 1, 1)))
    args = [a.replace("{tmp}", str(tmp_path)) if a != "W" else w for a in args]
    result = invoke("apply", rgb, *args, "-o", tmp_path / "o.npy")
    assert result.exit_code == 2, result.output
    assert message.replace("{W}", w) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_image_channels_must_match_the_first_layer(tmp_path, rgb):
    np.save(tmp_path / "w.npy", np.zeros((2, 1, 3, 3)))
    result = invoke("apply", rgb, "-k", tmp_path / "w.npy", "-o", tmp_path / "o.npy")
    assert result.exit_code == 1
    assert "takes 1 channel (C_in), but the image has 3 channels; use --gray" in result.stderr
    assert invoke("apply", rgb, "-k", tmp_path / "w.npy", "--gray",
                  "-o", tmp_path / "o.npy").exit_code == 0
    assert np.load(tmp_path / "o.npy").shape == (21, 23, 2)


KIRSCH_STACK = """name: kirsch4
kernels:
  - name: n
    matrix: [[5, 5, 5], [-3, 0, -3], [-3, -3, -3]]
rotate: 90
combine: stack
"""


def test_stack_bank_gives_one_map_per_member_in_order(tmp_path, rgb):
    (tmp_path / "k.yaml").write_text(KIRSCH_STACK)
    from imgconv.kernels import resolve

    bank = resolve(str(tmp_path / "k.yaml"))
    assert [k.name for k in bank.kernels] == ["n", "n@90", "n@180", "n@270"]
    pipeline = Pipeline.from_options([str(tmp_path / "k.yaml")], pad_mode="constant")
    assert pipeline.map_names() == ("n", "n@90", "n@180", "n@270")
    x = np.zeros((7, 7))
    x[:, 4:] = 1.0  # a vertical edge, bright on the right
    out = pipeline.run(x)
    assert out.shape == (7, 7, 4)
    for m, kernel in enumerate(bank.kernels):
        np.testing.assert_allclose(out[:, :, m], imgconv_correlate(x, kernel.weights))
    # the east-facing (270°) mask answers the bright right side most
    assert out[3, 3].argmax() == 3
    result = invoke("apply", rgb, "-k", tmp_path / "k.yaml", "-o", tmp_path / "o.npy")
    assert result.exit_code == 1
    assert "takes 1 channel (C_in), but the image has 3 channels; use --gray" in result.stderr


def imgconv_correlate(x, w):
    import imgconv

    return imgconv.correlate(x, w, pad_mode="constant")


def test_conv2d_matches_the_loop_reference():
    import imgconv

    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 9, 3))
    w, b = rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    out = imgconv.conv2d(x, w, b, padding=1, pad_mode="constant", stride=2)
    np.testing.assert_allclose(out, _conv_loop(x, w, b, 1, 2), rtol=1e-10)
    assert imgconv.conv2d(x[:, :, 0], np.ones((3, 3))).shape == (7, 9, 1)
    assert imgconv.conv2d(x, np.ones((3, 3, 3))).shape == (7, 9, 1)
    with pytest.raises(ValueError, match=r"take 2 input channels \(C_in\), but the image has 3"):
        imgconv.conv2d(x, np.ones((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="one value per output map"):
        imgconv.conv2d(x, w, [1, 2])


def test_conv2d_matches_torch():
    torch = pytest.importorskip("torch")
    import imgconv

    rng = np.random.default_rng(5)
    worst = 0.0
    for _ in range(40):
        c_in, c_out = (int(n) for n in rng.integers(1, 4, 2))
        kh, kw = (int(n) for n in rng.integers(1, 5, 2))
        h, w = int(rng.integers(kh, 12)), int(rng.integers(kw, 12))
        stride, dilation = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        pad = int(rng.integers(0, 3))
        x = rng.standard_normal((h, w, c_in)).astype(np.float32)
        wt = rng.standard_normal((c_out, c_in, kh, kw)).astype(np.float32)
        b = rng.standard_normal(c_out).astype(np.float32)
        try:
            theirs = torch.nn.functional.conv2d(
                torch.from_numpy(np.moveaxis(x, -1, 0).copy())[None], torch.from_numpy(wt),
                torch.from_numpy(b), stride=stride, padding=pad, dilation=dilation)
        except RuntimeError:
            continue
        ours = imgconv.conv2d(x, wt, b, padding=pad, pad_mode="constant", stride=stride,
                              dilation=dilation)
        expected = np.moveaxis(theirs[0].numpy(), 0, -1)
        assert ours.shape == expected.shape
        scale = max(1.0, float(np.abs(expected).max()))
        worst = max(worst, float(np.abs(ours - expected).max()) / scale)
    print(f"conv2d vs torch: largest |difference| / max(1, |result|) {worst:.3g}")
    assert worst < 1e-5


def _network(tmp_path: Path):
    rng = np.random.default_rng(6)
    w1, b1 = rng.standard_normal((4, 3, 3, 3)) * 0.1, rng.standard_normal(4)
    w2, b2 = rng.standard_normal((5, 4, 3, 3)) * 0.1, rng.standard_normal(5)
    for name, array in (("conv1", w1), ("conv1_bias", b1), ("conv2", w2), ("conv2_bias", b2)):
        np.save(tmp_path / f"{name}.npy", array.astype(np.float32))
    (tmp_path / "net.yaml").write_text(
        "stages:\n"
        "  - conv: {weights: conv1.npy, bias: conv1_bias.npy, padding: 1,"
        " pad_mode: constant}\n"
        "  - activation: relu\n"
        "  - pool: {op: max, size: 2}\n"
        "  - conv: {weights: conv2.npy, bias: conv2_bias.npy, stride: 2, padding: valid}\n"
        "  - activation: relu\n"
        "  - pool: {op: avg, size: 2, ceil_mode: true}\n")
    return [a.astype(np.float32).astype(np.float64) for a in (w1, b1, w2, b2)]


def test_a_small_cnn_runs_exactly_through_the_cli(tmp_path, rgb):
    """conv, ReLU, max-pool, conv (stride 2), ReLU, avg-pool (ceil_mode) from a pipeline file
    with .npy weights beside it, against the loop references."""
    w1, b1, w2, b2 = _network(tmp_path)
    result = invoke("apply", rgb, "--pipeline", tmp_path / "net.yaml", "-o", tmp_path / "o.npy")
    assert result.exit_code == 0, result.output
    out = np.load(tmp_path / "o.npy")
    x = _pixels(rgb)
    y = _pool_loop(np.maximum(_conv_loop(x, w1, b1, 1, 1), 0), (2, 2), (2, 2), "max")
    y = _pool_loop(np.maximum(_conv_loop(y, w2, b2, 0, 2), 0), (2, 2), (2, 2), "avg",
                   ceil_mode=True)
    assert out.shape == y.shape == (2, 3, 5)  # the last avg window is partial
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-4)


def test_a_small_cnn_matches_torch_sequential(tmp_path, rgb):
    torch = pytest.importorskip("torch")
    w1, b1, w2, b2 = _network(tmp_path)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 5, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2, ceil_mode=True))
    with torch.no_grad():
        for layer, w, b in ((net[0], w1, b1), (net[3], w2, b2)):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
        x = _pixels(rgb).astype(np.float32)
        theirs = net(torch.from_numpy(np.moveaxis(x, -1, 0).copy())[None])[0].numpy()
    result = invoke("apply", rgb, "--pipeline", tmp_path / "net.yaml", "-o", tmp_path / "o.npy")
    assert result.exit_code == 0, result.output
    ours = np.load(tmp_path / "o.npy")
    expected = np.moveaxis(theirs, 0, -1)
    worst = float(np.abs(ours - expected).max()) / max(1.0, float(np.abs(expected).max()))
    print(f"nn.Sequential vs the CLI: largest |difference| / max(1, |result|) {worst:.3g}")
    assert worst < 1e-5


def test_pipeline_file_channel_mismatch_is_one_line(tmp_path, rgb):
    np.save(tmp_path / "a.npy", np.zeros((8, 3, 3, 3)))
    np.save(tmp_path / "b.npy", np.zeros((2, 6, 3, 3)))
    (tmp_path / "p.yaml").write_text("stages:\n  - weights: a.npy\n  - activation: relu\n"
                                     "  - conv: {weights: b.npy}\n")
    result = invoke("apply", rgb, "--pipeline", tmp_path / "p.yaml", "-o", tmp_path / "o.npy")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'p.yaml'}: stage 3 (b.npy) takes 6 channels (C_in), "
        "but stage 1 (a.npy) gives 8 maps (C_out)")


# --- outputs for many maps: .npy, float TIFF, {map}, --montage, the 8-bit limit ------------

@pytest.fixture
def layer5(tmp_path: Path) -> Path:
    path = tmp_path / "w5.npy"
    np.save(path, np.random.default_rng(7).standard_normal((5, 3, 3, 3)).astype(np.float32))
    return path


def test_float_tiff_holds_every_map(tmp_path, rgb, layer5):
    import tifffile

    assert invoke("apply", rgb, "-k", layer5, "-o", tmp_path / "o.npy").exit_code == 0
    result = invoke("apply", rgb, "-k", layer5, "--depth", "float", "-o", tmp_path / "o.tiff")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tiff"),
                                  np.load(tmp_path / "o.npy"))


def test_maps_an_8_bit_image_does_not_show_are_a_usage_error(tmp_path, rgb, layer5):
    result = invoke("apply", rgb, "-k", layer5, "-o", tmp_path / "o.png")
    assert result.exit_code == 2
    assert ("the result has 5 maps; an 8-bit png image shows 1 (grey) or 3 (as red, green, "
            "blue)") in result.stderr
    assert "{map} in --name" in result.stderr and "--montage FILE.png" in result.stderr
    assert not (tmp_path / "o.png").exists()


def test_map_field_writes_one_image_per_map(tmp_path, rgb, layer5):
    result = invoke("apply", rgb, "-k", layer5, "--out-dir", tmp_path / "out",
                    "--name", "{stem}-{map}{ext}", "--output-map", "normalize")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"rgb-{i}.png" for i in range(5)]
    invoke("apply", rgb, "-k", layer5, "-o", tmp_path / "all.npy")
    maps = np.load(tmp_path / "all.npy")
    third = np.asarray(Image.open(tmp_path / "out" / "rgb-2.png"), dtype=np.float64)
    m = maps[:, :, 2]
    np.testing.assert_allclose(third, np.round((m - m.min()) / (m.max() - m.min()) * 255),
                               atol=1)


def test_map_field_names_stack_members(tmp_path, rgb):
    (tmp_path / "k.yaml").write_text(KIRSCH_STACK)
    result = invoke("apply", rgb, "-k", tmp_path / "k.yaml", "--gray", "--out-dir",
                    tmp_path / "out", "--name", "{map}.png", "--dry-run")
    assert result.exit_code == 0, result.output
    for name in ("n.png", "n-90.png", "n-180.png", "n-270.png"):
        assert str(tmp_path / "out" / name) in result.stdout
    result = invoke("apply", rgb, "-k", "sobel", "--out-dir", tmp_path / "o2",
                    "--name", "{stem}-{map}.png")
    assert result.exit_code == 2
    assert "{map} needs maps: a stack bank or a layer's weights" in result.stderr


def test_montage(tmp_path, rgb, layer5):
    out = tmp_path / "m.png"
    result = invoke("apply", rgb, "-k", layer5, "--pool", "max", "--pool-size", "2",
                    "--montage", out)
    assert result.exit_code == 0, result.output
    picture = np.asarray(Image.open(out))
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0]  # the input beside
    assert invoke("apply", rgb, "-k", layer5, "--montage", out).exit_code == 2  # exists
    other = tmp_path / "other.png"
    Image.open(rgb).save(other)
    result = invoke("apply", rgb, other, "-k", layer5, "--montage", tmp_path / "x.png")
    assert result.exit_code == 2
    assert "--montage takes one input file, got 2" in result.stderr


def test_normalise_each_map_on_its_own():
    from imgconv.montage import normalise

    assert normalise(np.array([[5.0, 5.0]])).tolist() == [[128, 128]]
    assert normalise(np.array([[0.0, 1e-3]])).tolist() == [[0, 255]]


@pytest.mark.parametrize("maps", [2, 4])
def test_two_or_four_maps_never_become_alpha(tmp_path, rgb, maps):
    # an 8-bit PNG of 2 or 4 channels is grey or RGB plus alpha: a map would hide the others
    weights = np.random.default_rng(9).standard_normal((maps, 3, 3, 3))
    path = tmp_path / "w.npy"
    np.save(path, weights)
    result = invoke("apply", rgb, "-k", path, "-o", tmp_path / "o.png")
    assert result.exit_code == 2
    assert f"the result has {maps} maps" in result.stderr
    assert not (tmp_path / "o.png").exists()
