"""``imgconv list`` and ``imgconv show``: output, JSON, errors and start-up imports."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from test_kernels_files import BAD_FILES
from typer.testing import CliRunner

from imgconv.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("IMGCONV_KERNEL_PATH", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)


def run(*args):
    return runner.invoke(app, list(args))


def test_list_table():
    result = run("list")
    assert result.exit_code == 0, result.output
    for name in ("sobel-x", "kirsch", "gaussian", "box-blur"):
        assert name in result.stdout
    assert "family" in result.stdout and "bank" in result.stdout


def test_list_json_and_tag():
    rows = json.loads(run("list", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert {"name", "shape", "kind", "source", "description"} <= set(rows[0])
    assert by_name["sobel-x"]["shape"] == [3, 3] and by_name["sobel-x"]["kind"] == "kernel"
    assert by_name["sobel"]["kind"] == "bank" and by_name["sobel"]["members"] == [
        "sobel-x", "sobel-y"]
    assert by_name["gaussian"]["kind"] == "family" and by_name["gaussian"]["shape"] is None
    blur = json.loads(run("list", "--tag", "blur", "--json").stdout)
    assert {r["name"] for r in blur} >= {"box-blur", "gaussian", "motion-blur"}
    assert all("blur" in r["tags"] for r in blur)


def test_list_shows_shadowing(tmp_path):
    folder = tmp_path / "config" / "imgconv" / "kernels"
    folder.mkdir(parents=True)
    (folder / "mine.yaml").write_text("name: emboss\nmatrix: [[1, 2]]\n")
    result = run("list", "--json")
    row = next(r for r in json.loads(result.stdout) if r["name"] == "emboss")
    assert row["source"] == str(folder) and row["shadows"] == ["built-in"]
    assert "(shadows" in run("list").stdout


def test_list_unknown_tag():
    result = run("list", "--tag", "edg")
    assert result.exit_code == 2
    assert "no kernel has the tag 'edg' (did you mean edge?)" in result.stderr


def test_show_kernel():
    result = run("show", "sobel-x")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "matrix 3×3 as written" in out and "separable" in out
    assert "column [1 2 1] × row [-1 0 1]" in out and "abs" in out


def test_show_scaled_kernel_shows_weights():
    out = run("show", "box-blur").stdout
    assert "weights = matrix × 0.1111" in out and "sum         1" in out


def test_show_json():
    info = json.loads(run("show", "gaussian-blur", "--json").stdout)
    assert info["name"] == "gaussian-blur" and info["shape"] == [3, 3]
    assert info["weights"][1] == [0.125, 0.25, 0.125]
    assert info["matrix"][1] == [2, 4, 2] and info["scale"] == 1 / 16
    assert info["rank"] == 1 and info["output"] == "clip"


def test_show_bank_json():
    info = json.loads(run("show", "sobel", "--json").stdout)
    assert info["combine"] == "magnitude" and info["shape"] == [3, 3]
    assert [k["name"] for k in info["kernels"]] == ["sobel-x", "sobel-y"]
    assert info["weights"][1] == [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
    text = run("show", "kirsch").stdout
    assert "max of 8 kernels" in text and "kirsch-n@315" in text


def test_show_family_and_inline():
    out = run("show", "gaussian:sigma=0.5").stdout
    assert "gaussian accepts sigma=S" in out
    info = json.loads(run("show", "0 1 0; 1 -4 1; 0 1 0", "--json").stdout)
    assert info["source"] == "inline" and info["weights"][1] == [1, -4, 1]


def test_show_large_kernel_is_summarised():
    result = run("show", "box:301")
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "301×301, too large to draw (--json has every value): min 1, max 1, " in out
    assert "90601 non-zero" in out
    assert "centre row 150, columns 145–155: … 1 1 1 1 1 1 1 1 1 1 1 …" in out
    assert "(301 values)" in out and len(result.stdout) < 5000
    info = json.loads(run("show", "box:301", "--json").stdout)
    assert len(info["weights"]) == 301 and all(len(r) == 301 for r in info["weights"])
    # 25×25 is still drawn in full.
    drawn = run("show", "box:25").stdout
    assert "too large" not in drawn and drawn.count("\n") > 50


def test_show_bank_facts_match_kernel_facts_layout():
    out = run("show", "sobel").stdout
    for line in ("combine     magnitude of 2 kernels", "members     sobel-x, sobel-y",
                 "shape       3×3 each", "parameters  18", "output      abs"):
        assert line in out


def test_list_tag_is_filtered_by_catalog(monkeypatch):
    import imgconv.kernels as kernels

    calls = []
    real = kernels.catalog

    def spy(tag=None):
        calls.append(tag)
        return real(tag)

    monkeypatch.setattr(kernels, "catalog", spy)
    assert "kirsch" in run("list", "--tag", "compass").stdout
    assert calls == ["compass"]


def test_show_multi_channel(tmp_path):
    (tmp_path / "rgb.yaml").write_text("matrix:\n  - [[1, 0]]\n  - [[0, 1]]\n")
    info = json.loads(run("show", "rgb.yaml", "--json").stdout)
    assert info["shape"] == [1, 2, 2] and info["weights"] == [[[1, 0]], [[0, 1]]]
    assert "channel 2" in run("show", "rgb.yaml").stdout


SPEC_ERRORS = [
    ("sobl", "unknown kernel 'sobl' (did you mean sobel"),
    ("box:0", "size must be >= 1, got 0"),
    ("gaussian:sigma=-1", "sigma must be >= 0.01, got -1"),
    ("gaussian:sigam=1", "unknown parameter 'sigam' (did you mean sigma?)"),
    ("1 2; 3", "ragged rows"),
    ("1 nan", "finite"),
    ("missing.yaml", "kernel file 'missing.yaml' not found"),
    ("x.yml:a:b", "'x.yml:a:b' has too many ':' parts"),
    ("gaussian:=2", "'=2' has no parameter name before '='; gaussian accepts sigma=S"),
]


def assert_clean_error(result, message):
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert message in " ".join(result.stderr.split())
    assert isinstance(result.exception, SystemExit)  # an exit, not a crash
    assert result.stdout == ""


@pytest.mark.parametrize(("spec", "message"), SPEC_ERRORS)
def test_show_bad_specs(spec, message):
    assert_clean_error(run("show", spec), message)


#: every bad file's message is the library's (test_kernels_files.test_bad_files checks each);
#: the command line is checked to print a sample of them as one clean error
SOME_BAD_FILES = BAD_FILES[::6]


@pytest.mark.parametrize(("text", "pattern"), SOME_BAD_FILES,
                         ids=[m[:30] for _, m in SOME_BAD_FILES])
def test_show_bad_files(tmp_path, text, pattern):
    (tmp_path / "bad.yaml").write_text(text)
    result = run("show", "bad.yaml")
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # an exit, not a crash
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert re.search(pattern, " ".join(result.stderr.split()))


def test_a_broken_user_file_fails_list_cleanly(tmp_path):
    folder = tmp_path / "config" / "imgconv" / "kernels"
    folder.mkdir(parents=True)
    (folder / "broken.yaml").write_text("matrx: [[1]]\n")
    assert_clean_error(run("list"), "unknown key 'matrx' (did you mean matrix?)")


def test_an_unreadable_folder_is_one_warning_and_builtins_still_work(tmp_path, monkeypatch):
    from pathlib import Path

    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "k.yaml").write_text("name: k\nmatrix: [[1]]\n")
    monkeypatch.setenv("IMGCONV_KERNEL_PATH", str(folder))
    real = Path.iterdir

    def iterdir(self):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    for args in (["show", "sobel"], ["list"]):
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert result.stderr == (f"warning: kernel folder '{folder}' cannot be read "
                                 "(Permission denied); skipped\n")
        assert "sobel" in result.stdout


def test_a_self_referring_user_bank_fails_list_cleanly(tmp_path):
    folder = tmp_path / "config" / "imgconv" / "kernels"
    folder.mkdir(parents=True)
    (folder / "loop.yaml").write_text(f"kernels: [{folder / 'loop.yaml'}]\ncombine: max\n")
    assert_clean_error(run("list"), "a bank that refers to itself")
    assert_clean_error(run("show", "loop"), "a bank that refers to itself")


def test_real_process_errors(imgconv_script, tmp_path):
    (tmp_path / "bad.yaml").write_text("matrix:\n  - [1, 2]\n  - [3]\n")
    for args, message in [
        (["show", "bad.yaml"], "bad.yaml:3: kernel 'bad': matrix row 2 has 1 number"),
        (["show", "sobl"], "unknown kernel 'sobl'"),
        (["show", "gaussian:sigma=-1"], "sigma must be >= 0.01"),
    ]:
        result = subprocess.run([imgconv_script, *args], capture_output=True, text=True,
                                cwd=tmp_path, check=False)
        assert result.returncode == 2
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
    ok = subprocess.run([imgconv_script, "show", "sobel-x", "--json"], capture_output=True,
                        text=True, check=True)
    assert json.loads(ok.stdout)["weights"][0] == [-1, 0, 1]


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["show", "sobel"],
                                  ["show", "gaussian:sigma=2", "--json"]])
def test_list_and_show_import_no_scipy_or_pil(args):
    code = (
        "import sys\n"
        "from imgconv.cli import app\n"
        "from typer.testing import CliRunner\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = sorted(m for m in ('scipy', 'PIL') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("command", [["show", "sobl"], ["list", "--tag", "nosuch"]])
def test_show_and_list_take_the_debug_the_internal_error_message_names(command):
    # cli.main's "internal error: ... (rerun with --debug ...)" must name an option they have
    assert_clean_error(run(*command), "error")  # without it: one line
    result = run(*command, "--debug")
    assert type(result.exception).__name__ == "KernelError"  # with it: the exception itself


def test_every_name_list_and_show_print_resolves():
    # issue 14, item 27: `show kirsch` printed kirsch-n@45, which -k did not know
    from imgconv.kernels import resolve

    listed = json.loads(run("list", "--json").stdout)
    names = {row["name"] for row in listed} | {m for row in listed for m in row["members"]}
    shown = set()
    for name in sorted(names):
        info = json.loads(run("show", name, "--json").stdout)
        shown |= {info["name"], *(k["name"] for k in info.get("kernels", []))}
        for k in info.get("kernels", []):
            assert resolve(k["name"]).weights.tolist() == k["weights"], k["name"]
    assert {"kirsch-n", "kirsch-n@45", "kirsch-n@315"} <= names | shown
    for name in sorted(names | shown):
        result = run("show", name)
        assert result.exit_code == 0, (name, result.stderr)
