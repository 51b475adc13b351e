"""The command as a process: start-up, help, completion, standard streams and what it prints.

Each of these runs the installed script (or ``python -m imgconv``) for real, since
what is tested lives outside what CliRunner reaches: file descriptors, signals and
the interpreter's own exit.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

BASH = "/bin/bash"


def run(imgconv_script, *args, **kwargs):
    return subprocess.run([imgconv_script, *args], capture_output=True, text=True, timeout=60,
                          **kwargs)


def shell(command, **kwargs):
    """``command`` in bash, with ``$IMGCONV`` the installed script."""
    return subprocess.run([BASH, "-c", command], capture_output=True, text=True, timeout=60,
                          **kwargs)


@pytest.fixture
def env(imgconv_script):
    return {**os.environ, "IMGCONV": imgconv_script}


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8)).save(path)
    return path


def test_bare_command_prints_the_help_once(imgconv_script):
    done = run(imgconv_script)
    assert done.returncode == 0
    assert done.stdout.count("Usage:") == 1, done.stdout
    assert done.stderr == ""


def test_shell_completion_is_offered(imgconv_script):
    assert "--show-completion" in run(imgconv_script, "--help").stdout
    done = run(imgconv_script, "--show-completion", "bash")
    assert done.returncode == 0
    assert "_IMGCONV_COMPLETE" in done.stdout


def test_ctrl_c_while_the_command_starts_is_quiet(tmp_path):
    # Ctrl-C lands while typer is being imported: stand in a typer whose import is interrupted
    (tmp_path / "typer").mkdir()
    (tmp_path / "typer" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run([sys.executable, "-m", "imgconv", "list"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 130
    assert done.stderr == ""


def test_a_closed_stdout_is_an_error_not_a_crash(env):
    done = shell('"$IMGCONV" list >&-', env=env)
    assert done.returncode == 1
    assert done.stderr == "error: cannot write to standard output (standard output is closed)\n"


def test_a_full_stdout_is_an_error(env):
    done = shell('"$IMGCONV" show sobel >/dev/full', env=env)
    assert done.returncode == 1
    assert done.stderr == "error: cannot write to standard output (No space left on device)\n"


def test_a_closed_stdin_is_an_error(env, tmp_path):
    done = shell(f'"$IMGCONV" apply - -k sobel -o {tmp_path}/out.png <&-', env=env)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: standard input is closed"]
    assert not (tmp_path / "out.png").exists()


def test_a_closed_stdout_never_lands_in_an_output_file(env, photo, tmp_path):
    # with descriptor 1 closed, the first file opened would get it: the output must stay an image
    out = tmp_path / "out.png"
    done = shell(f'"$IMGCONV" apply {photo} -k sobel -o {out} >&-', env=env)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (11, 9)
    done = shell(f'"$IMGCONV" apply - -k sobel -o - --format png < {photo} >&-', env=env)
    assert done.returncode == 1
    assert "standard output is closed" in done.stderr


@pytest.mark.parametrize("redirect", ["2>&-", "2>/dev/full"])
def test_a_closed_or_full_stderr_does_not_fail_the_run(env, photo, tmp_path, redirect):
    out = tmp_path / "out.png"
    done = shell(f'"$IMGCONV" apply {photo} -k sobel -o {out} {redirect}', env=env)
    assert done.returncode == 0
    assert out.exists()
    # and a failing run still says so by its status
    done = shell(f'"$IMGCONV" apply {tmp_path}/missing.png -k sobel -o {out}.2.png {redirect}',
                 env=env)
    assert done.returncode == 1


@pytest.mark.parametrize("args", [["show", "sobel"], ["list"], ["show", "sobel", "--json"],
                                  ["--help"], ["apply", "--help"]])
def test_a_reader_that_goes_away_ends_the_run_quietly(imgconv_script, args):
    # the pipe's reading end is closed before the command writes: EPIPE at its first line
    proc = subprocess.Popen([imgconv_script, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141  # 128 + SIGPIPE, as the shell reports for `ls | head`
    assert err == b""


def test_names_with_control_characters_are_printed_escaped(imgconv_script, tmp_path):
    bad = tmp_path / "a\x1b[2Jb\nc.png"
    bad.write_bytes(b"not an image")
    done = run(imgconv_script, "apply", str(bad), "-k", "sobel", "--out-dir", str(tmp_path / "o"))
    assert done.returncode == 1
    assert "\x1b" not in done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "a\\x1b[2Jb\\nc.png" in error[0]


def test_undecodable_names_are_printed_escaped(imgconv_script, tmp_path):
    folder = os.fsencode(tmp_path)
    path = os.path.join(folder, b"caf\xe9.png")
    with open(path, "wb") as f:
        f.write(b"not an image")
    done = subprocess.run([imgconv_script, "apply", path, "-k", "sobel", "-o",
                           str(tmp_path / "o.png")], capture_output=True, timeout=60)
    assert done.returncode == 1
    assert b"caf\\xe9.png" in done.stderr
    assert b"Traceback" not in done.stderr


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP"])
def test_a_signal_while_apply_starts_up_exits_128_plus_it(photo, tmp_path, monkeypatch, signum):
    # apply's handler turns SIGTERM and SIGHUP into a KeyboardInterrupt carrying the
    # signal; one that came while numpy and the pipeline were still being imported,
    # before apply's own try, exited 130 (SIGINT's code) instead of 143 or 129
    import signal

    from imgconv.cli import apply as apply_module
    from imgconv.cli import main

    number = getattr(signal, signum, None)
    if number is None:
        pytest.skip(f"no {signum} here")

    def signalled(*args, **kwargs):
        raise apply_module._Signalled(number)

    monkeypatch.setattr("imgconv.prefetch.Prefetch", signalled)
    out = tmp_path / "out.png"
    monkeypatch.setattr(sys, "argv", ["imgconv", "apply", str(photo), "-k", "sobel", "-o",
                                      str(out)])
    with pytest.raises(SystemExit) as ended:
        main()
    assert ended.value.code == 128 + number
    assert not out.exists()
