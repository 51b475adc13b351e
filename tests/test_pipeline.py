"""Pipeline: the fused integer path equals running in float and mapping at the end."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from imgconv.pipeline import Pipeline, map_output


@pytest.mark.parametrize("kernels", [["sobel-x"], ["box-blur"], ["1 2 4; 8 16 -32"],
                                     ["gaussian:sigma=1"], ["sobel"], ["box-blur", "sobel-x"]])
@pytest.mark.parametrize("how", ["clip", "abs", "offset", "normalize"])
@pytest.mark.parametrize("activation", ["none", "relu", "abs"])
@pytest.mark.parametrize("geometry", [{}, {"stride": "2", "padding": "valid"},
                                      {"mode": "convolve", "dilation": "2", "pad_mode": "wrap"}],
                         ids=["same", "valid-s2", "convolve-d2"])
def test_run_mapped_equals_run_then_map(kernels, how, activation, geometry):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(21, 17, 3)).astype(np.uint8)
    pipeline = Pipeline.from_options(kernels, activation=activation, **geometry)
    fused, clipped = pipeline.run_mapped(pixels, how, scale=1.0, out_max=255)
    expected, expected_clipped = map_output(pipeline.run(pixels), how, scale=1.0, out_max=255)
    assert fused.dtype == np.uint8
    np.testing.assert_array_equal(fused, expected)
    assert clipped == pytest.approx(expected_clipped)


@pytest.mark.parametrize(("kernel", "how", "int16"), [
    ("sobel-x", "clip", True), ("sobel-x", "abs", True), ("5 5 5; -3 0 -3; -3 -3 -3", "clip", True),
    ("sobel-x", "offset", False),  # +128 is mapped in float32
    ("box-blur", "clip", False),  # fractions: float32 sums
])
@pytest.mark.parametrize("activation", ["none", "relu", "abs"])
def test_exact_int16_tiles_map_without_floats(monkeypatch, kernel, how, int16, activation):
    import imgconv.pipeline.run as pl

    calls = []
    real = pl.map_int16_tile

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pl, "map_int16_tile", spy)
    # extremes: sums at the int16 path's largest magnitudes, both signs
    pixels = np.random.default_rng(7).choice([0, 1, 254, 255], size=(23, 19, 3)).astype(np.uint8)
    pipeline = Pipeline.from_options([kernel], activation=activation)
    fused, clipped = pipeline.run_mapped(pixels, how, scale=1.0, out_max=255)
    expected, expected_clipped = map_output(pipeline.run(pixels), how, scale=1.0, out_max=255)
    np.testing.assert_array_equal(fused, expected)
    assert clipped == pytest.approx(expected_clipped)
    assert bool(calls) == int16


def test_run_mapped_16bit_with_scale():
    pixels = np.random.default_rng(4).integers(0, 256, size=(9, 11)).astype(np.uint8)
    pipeline = Pipeline.from_options(["sharpen"])
    fused, _ = pipeline.run_mapped(pixels, "clip", scale=257.0, out_max=65535)
    expected, _ = map_output(pipeline.run(pixels), "clip", scale=257.0, out_max=65535)
    assert fused.dtype == np.uint16
    np.testing.assert_array_equal(fused, expected)


def test_anchor_and_bias_in_fused_path(tmp_path):
    spec = tmp_path / "k.yaml"
    spec.write_text("name: shifted\nmatrix: [[1, 2], [3, 4]]\nanchor: [0, 0]\nbias: 10\n")
    pixels = np.arange(30, dtype=np.uint8).reshape(5, 6)
    for mode in ("correlate", "convolve"):
        pipeline = Pipeline.from_options([str(spec)], mode=mode)
        fused, _ = pipeline.run_mapped(pixels, "clip", scale=1.0, out_max=255)
        expected, _ = map_output(pipeline.run(pixels), "clip", scale=1.0, out_max=255)
        np.testing.assert_array_equal(fused, expected)
    # anchor (0, 0): the kernel's top-left tap sits on the output pixel
    values = Pipeline.from_options([str(spec)], pad_mode="constant").run(pixels)
    assert values[0, 0] == 1 * 0 + 2 * 1 + 3 * 6 + 4 * 7 + 10


@pytest.mark.parametrize("bank", ["sobel", "kirsch", "diagonal", "prewitt"])
@pytest.mark.parametrize("how", ["magnitude", "max", "min", "sum", "mean"])
def test_bank_fold_equals_combine(tmp_path, bank, how):
    from imgconv.kernels import combine, resolve

    spec = tmp_path / "bank.yaml"
    inline = ['"' + "; ".join(" ".join(repr(float(v)) for v in row) for row in k.weights) + '"'
              for k in resolve(bank).kernels[:3]]
    spec.write_text(f"name: b\nkernels: [{', '.join(inline)}]\ncombine: {how}\n")
    x = np.random.default_rng(5).random((13, 11)) * 255
    stage = Pipeline.from_options([str(spec)]).stages[0]
    expected = combine([stage.apply_kernel(x, k) for k in stage.members()], how)
    np.testing.assert_array_equal(stage.run(x), expected)


def test_activation_works_in_place_only_on_the_pipelines_own_arrays():
    from imgconv.pipeline import ActivationStage, Pipeline, conv_stage, pool_stage

    x = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0], [-7.0, 8.0, -9.0]], np.float32)
    before = x.copy()
    # first stage: the caller's array is not written
    relu_first = Pipeline((ActivationStage("relu"), pool_stage("max", 2, 1)))
    np.testing.assert_array_equal(relu_first.run(x), [[4, 6], [8, 8]])
    np.testing.assert_array_equal(x, before)
    # after a conv: the same values as activating a copy
    for kind in ("relu", "abs", "none"):
        layer = Pipeline((conv_stage("sobel-x"), ActivationStage(kind)))
        conv = Pipeline((conv_stage("sobel-x"),)).run(x)
        expected = {"relu": np.maximum(conv, 0), "abs": np.abs(conv), "none": conv}[kind]
        np.testing.assert_array_equal(layer.run(x), expected)
        np.testing.assert_array_equal(x, before)


def _stage_by_stage(pipeline, x):
    from imgconv.pipeline import ActivationStage

    for stage in pipeline.stages:
        x = stage.run(x) if not isinstance(stage, ActivationStage) else stage.run(x.copy())
    return x


@settings(max_examples=200, deadline=None)
@given(
    spec=st.sampled_from(["sobel-x", "box:3", "gaussian:sigma=1", "sobel", "kirsch",
                          "0 1 2; 3 4 5", "[[1], [2], [-3], [4]]", "gaussian:sigma=3"]),
    mode=st.sampled_from(["correlate", "convolve"]),
    padding=st.sampled_from(["same", "valid", "full", "2", "0,3,1,0"]),
    pad_mode=st.sampled_from(["reflect", "mirror", "nearest", "constant", "wrap"]),
    stride=st.sampled_from(["1", "2", "3", "1,2", "2,1"]),
    dilation=st.sampled_from(["1", "2", "2,1"]),
    act=st.sampled_from([None, "relu", "abs"]),
    pool=st.tuples(st.sampled_from(["max", "avg"]), st.sampled_from(["1", "2", "3", "2,1"]),
                   st.sampled_from([None, "1", "2", "3", "1,2"])),
    # mostly tall enough to be cut into bands, sometimes too small for the layer
    shape=st.tuples(st.integers(20, 60) | st.integers(1, 19),
                    st.integers(4, 20) | st.integers(1, 3)),
    kind=st.sampled_from(["gray", "color", "float"]),
    band=st.integers(1, 9),
)
def test_conv_then_pool_in_bands_is_the_whole_image_result(
    spec, mode, padding, pad_mode, stride, dilation, act, pool, shape, kind, band
):
    from imgconv import pipeline as P
    from imgconv.pipeline import run

    try:
        stages = [P.conv_stage(spec, mode=mode, padding=padding, pad_mode=pad_mode,
                               cval=1.5, stride=stride, dilation=dilation)]
    except Exception:
        event("not a layer")
        return  # not a valid layer (an even kernel with 'same' convolve, say)
    if act:
        stages.append(P.ActivationStage(act))
    stages.append(P.pool_stage(pool[0], pool[1], pool[2]))
    pipeline = P.Pipeline(tuple(stages))
    rng = np.random.default_rng(sum(shape))
    if kind == "float":
        x = rng.standard_normal(shape).astype(np.float32) * 100
    else:
        x = rng.integers(0, 256, (*shape, 3) if kind == "color" else shape, dtype=np.uint8)
    old = run.BAND_ROWS
    try:
        expected = _stage_by_stage(pipeline, x)
    except Exception as exc:  # too small for the kernel or the pool: the same message
        run.BAND_ROWS = band
        try:
            with pytest.raises(type(exc)) as raised:
                pipeline.run(x)
        finally:
            run.BAND_ROWS = old
        assert str(raised.value) == str(exc)
        event("an error")
        return
    run.BAND_ROWS = band
    try:
        banded = pipeline._pooled_in_bands(x)
        actual = pipeline.run(x)
    finally:
        run.BAND_ROWS = old
    event("in bands" if banded is not None else "stage by stage")
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    conv = stages[0]
    if any(conv.strategy_for(x, k) != "direct" for k in conv.members()):
        # FFT blocks and BLAS products follow the band: the same sums, rounded otherwise
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)
    else:
        np.testing.assert_array_equal(actual, expected)
    if pad_mode == "wrap":
        assert banded is None


# --- pipeline files: inline mappings and hostile files (issue 14: items 3, 8 and 28) ----------


def test_a_stage_takes_an_inline_mapping_as_a_bank_member_does(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "stages:\n"
        "  - kernel: {matrix: [[0, 1, 0], [1, -4, 1], [0, 1, 0]]}\n"
        "  - kernel:\n      name: half\n      matrix: '1 1'\n      scale: 1/2\n"
        "  - kernel: {family: gaussian, params: {sigma: 1}}\n"
        "  - kernel: [[1, 2, 1]]\n"
    )
    stages = Pipeline.from_yaml(path).conv_stages
    assert [s.spec for s in stages] == ["stage-1", "half", "stage-3", "[[1, 2, 1]]"]
    np.testing.assert_array_equal(stages[0].kernel.weights,
                                  Pipeline.from_options(["laplacian"]).conv_stages[0].kernel.weights)
    assert stages[1].kernel.weights.tolist() == [[0.5, 0.5]]
    assert stages[2].kernel.shape == (7, 7)


@pytest.mark.parametrize(("stage", "message"), [
    ("{matrix: [[1, 2], [3]]}", r"p\.yaml: stage 1: kernel 'stage-1': matrix row 2 has 1 number"),
    ("{matrx: [[1]]}", r"stage 1: kernel 'stage-1': unknown key 'matrx' \(did you mean matrix\?\)"),
    ("null", r"stage 1: kernel must be a kernel spec or a mapping, got None"),
])
def test_bad_inline_stage(tmp_path, stage, message):
    from imgconv.errors import UsageError

    path = tmp_path / "p.yaml"
    path.write_text(f"stages:\n  - kernel: {stage}\n")
    with pytest.raises(UsageError, match=message):
        Pipeline.from_yaml(path)


def _bomb(leaf='"lol"', depth=9, width=9):
    text = f"&a0 [{', '.join([leaf] * width)}]"
    for k in range(1, depth):
        text = f"&a{k} [{text}, {', '.join([f'*a{k - 1}'] * (width - 1))}]"
    return text


@pytest.mark.parametrize(("text", "message"), [
    ("stages:\n  - kernel: " + _bomb() + "\n", r"p\.yaml: line 2: aliases \(\*name\) repeat"),
    ("stages:\n  - kernel: {matrix: " + _bomb("1") + "}\n", r"line 2: aliases \(\*name\) repeat"),
    ("stages: " + _bomb() + "\n", r"line 1: aliases"),
    ("stages:\n  - activation: " + _bomb() + "\n", r"line 2: aliases"),
    ("stages:\n  - kernel: " + "[" * 200 + "1" + "]" * 200 + "\n", r"nest more than 32 deep"),
])
def test_hostile_pipeline_files(tmp_path, text, message):
    from imgconv.errors import UsageError

    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as info:
        Pipeline.from_yaml(path)
    assert len(str(info.value)) < 400


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_pipeline_file_is_refused(tmp_path):
    from imgconv.errors import UsageError

    os.mkfifo(tmp_path / "p.yaml")
    with pytest.raises(UsageError, match=r"p\.yaml: the pipeline file is not a regular file"):
        Pipeline.from_yaml(tmp_path / "p.yaml")
