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
