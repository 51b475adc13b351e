"""Messages reach a terminal through Rich (colour) and anything else as plain, unwrapped lines."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from imgconv.cli.output import RICH_TERMINAL_VARIABLES, Stream, print_error, stderr

LONG = "in/" + "x" * 150 + ".jpg: cannot decode the image"


@pytest.fixture
def no_terminal_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RICH_TERMINAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_plain_lines_when_not_a_terminal(no_terminal_variables, capsys):
    print_error(LONG)
    Stream("stdout").line("[bold]not markup[/bold]")
    captured = capsys.readouterr()
    assert captured.err == f"error: {LONG}\n"  # one line, however long
    assert captured.out == "[bold]not markup[/bold]\n"
    assert not stderr.is_terminal


def test_rich_colours_a_terminal(no_terminal_variables, monkeypatch, capsys):
    monkeypatch.setenv("FORCE_COLOR", "1")
    stream = Stream("stderr")
    assert stream.is_terminal
    stream.line(LONG, "red", "error:")
    stream.line("[bold]not markup[/bold]")
    err = capsys.readouterr().err
    assert "\x1b[31merror:\x1b[0m" in err  # the prefix in red
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].endswith(LONG)  # not wrapped either
    assert lines[1] == "[bold]not markup[/bold]"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rich_decides_when_its_variables_are_set_even_empty(no_terminal_variables, monkeypatch):
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert Stream("stderr").is_terminal
    monkeypatch.setenv("FORCE_COLOR", "")  # Rich: not a terminal, whatever isatty says
    assert not Stream("stderr").is_terminal


def test_tables_outside_a_terminal_are_not_wrapped_or_padded(no_terminal_variables, tmp_path,
                                                              monkeypatch):
    # list, show and check print Rich tables; in a pipe, a row stays one line
    # (not folded at an assumed 80 columns) and no line ends in padding
    import shutil

    from typer.testing import CliRunner

    from imgconv.cli import app

    deep = tmp_path / ("a" * 60) / ("b" * 60)
    deep.mkdir(parents=True)
    photo = deep / "camera.png"
    shutil.copy(Path(__file__).resolve().parent.parent / "sample_images" / "camera.png", photo)
    runner = CliRunner()
    for args in (["list"], ["show", "sobel-x"], ["check", str(photo), "-k", "sobel"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines and all(line == line.rstrip() for line in lines), args
    (row,) = [line for line in lines if "camera.png" in line]
    assert str(photo) in row and row.split()[-2] == "ok"  # then the table's edge
    # with colour forced (a pipe to less -R), padding before the closing codes goes too
    from imgconv.cli import output as cli_common

    monkeypatch.setattr(cli_common.stdout, "_console", None)  # decided anew, as in a new process
    monkeypatch.setenv("FORCE_COLOR", "1")
    coloured = runner.invoke(app, ["check", str(photo), "-k", "sobel"])
    assert "\x1b[" in coloured.stdout
    assert not [line for line in coloured.stdout.split("\n")
                if re.search(r" (\x1b\[[0-9;]*m)*$", line)]
    monkeypatch.setattr(cli_common.stdout, "_console", None)
    monkeypatch.delenv("FORCE_COLOR")
    listing = runner.invoke(app, ["list"]).stdout
    assert any(line.startswith("box ") and "(box:N, box:HxW)" in line
               for line in listing.splitlines())


def test_check_prints_no_table_when_no_input_could_be_read(tmp_path):
    from typer.testing import CliRunner

    from imgconv.cli import app

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    result = CliRunner().invoke(app, ["check", str(bad), "-k", "sobel"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {bad}: not a readable image")
