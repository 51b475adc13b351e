"""Messages reach a terminal through Rich (colour) and anything else as plain, unwrapped lines."""

from __future__ import annotations

import io

import pytest

from imgconv.cli_common import RICH_TERMINAL_VARIABLES, Stream, print_error, stderr

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
