"""Kernel YAML files, the search path, shadowing, banks from files, and the shipped library."""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import imgconv
import imgconv.errors
import imgconv.kernels.library
from imgconv.errors import KernelError
from imgconv.kernels import Kernel, KernelBank, builtin_dir, catalog, dump, resolve, search_path

REPO = Path(__file__).resolve().parents[1]

EXAMPLE = """\
name: my-blur
description: 3x3 binomial blur
matrix:            # rows of numbers
  - [1, 2, 1]
  - [2, 4, 2]
  - [1, 2, 1]
scale: 1/16
bias: 0
anchor: [1, 1]
output: clip
tags: [blur]
"""

# (file contents, expected message): every bad input of issue 3, as a file.
BAD_FILES = [
    ("a: [1, 2\n", r"bad\.yaml:\d+: not valid YAML"),
    ("matrix:\n  - [1, 2, 3]\n  - [4, 5]\n",
     r"bad\.yaml:3: kernel 'bad': matrix row 2 has 2 numbers but row 1 has 3 \(ragged rows\)"),
    ("matrix: []\n", r"bad\.yaml:1: kernel 'bad': matrix must be rows .*got an empty list"),
    ("matrix: [[]]\n", r"kernel 'bad': matrix is empty"),
    ("matrix:\n  - [1, 2]\n  - [x, 4]\n",
     r"bad\.yaml:3: kernel 'bad': matrix row 2, column 1 must be a number, got 'x'"),
    ("matrix:\n  - [1, no]\n", r"bad\.yaml:2: .*must be a number, got false \(YAML reads"),
    ("matrix: [[1, .nan]]\n", r"must be a finite number, got nan"),
    ("matrix: [[1, .inf]]\n", r"must be a finite number, got inf"),
    (f"matrix:\n  - [1, {'9' * 400}]\n",
     r"bad\.yaml:2: kernel 'bad': matrix row 1, column 2 must be a finite number, "
     r"got an integer of 400 digits"),
    (f"matrix: [[1]]\nscale: {'9' * 400}\n",
     r"bad\.yaml:2: kernel 'bad': scale must be a finite number, got an integer of 400 digits"),
    (f"matrix: [[1]]\nscale: 1/{'9' * 400}\n",
     r"bad\.yaml:2: kernel 'bad': scale must not be zero"),
    (f"matrix: [[1]]\nbias: -{'9' * 400}\n", r"bad\.yaml:2: kernel 'bad': bias must be a finite"),
    ("matrix: [[1, 1e400]]\n", r"bad\.yaml:1: .*must be a finite number, got '1e400'"),
    ("matrix: [[1]]\nscale: 0\n", r"bad\.yaml:2: kernel 'bad': scale must not be zero"),
    ("matrix: [[1]]\nscale: 1/0\n", r"bad\.yaml:2: kernel 'bad': scale '1/0' divides by zero"),
    ("matrix: [[1]]\nscale: one/2\n", r"scale 'one/2' is not a number or a fraction"),
    ("matrix: [[1, -1]]\nnormalize: true\n",
     r"bad\.yaml:2: kernel 'bad': normalize: true needs a matrix whose sum is not zero"),
    ("matrx: [[1]]\n", r"bad\.yaml:1: kernel 'bad': unknown key 'matrx' \(did you mean matrix\?\)"),
    ("- name: a\n  matrix: [[1]]\n- name: a\n  matrix: [[2]]\n",
     r"bad\.yaml:3: kernel 'a': duplicate name 'a' \(also defined on line 1\)"),
    ("name: b\nkernels: [sobel-x, nosuch]\ncombine: max\n",
     r"bad\.yaml:2: kernel 'b': bank member 'nosuch': unknown kernel 'nosuch'"),
    ("name: b\nkernels: [sobel-x, b]\ncombine: max\n",
     r"bad\.yaml:2: kernel 'b': bank member 'b' refers to the bank itself"),
    ("name: b\nkernels: [sobel]\ncombine: max\n", r"bank member 'sobel' is a bank; banks cannot"),
    ("name: b\nkernels: [sobel-x, box:5]\ncombine: max\n", r"all kernels must have the same shape"),
    ("name: b\nkernels: [sobel-x]\n", r"a bank needs combine: one of magnitude"),
    ("name: b\nkernels: [sobel-x]\ncombine: avg\n", r"bad\.yaml:3: .*combine must be one of"),
    ("name: b\nkernels: [box:2]\ncombine: max\nrotate: 45\n", r"cannot rotate 'box:size=2'"),
    ("name: b\nkernels: [sobel-x]\ncombine: max\nrotate: 30\n", r"rotate must be one of 45, 90"),
    ("matrix: [[1]]\nkernels: [a]\n", r"may have only one of matrix"),
    ("description: nothing\n", r"needs one of matrix \(a kernel\), kernels \(a bank\) or family"),
    ("matrix: [[1]]\nanchor: [1, 0]\n", r"bad\.yaml:2: kernel 'bad': anchor must be two ints"),
    ("matrix: [[1]]\noutput: bright\n", r"output must be one of clip, abs, offset, normalize"),
    ("matrix: [[1]]\nmatrix: [[2]]\n", r"bad\.yaml: line 2: key 'matrix' appears twice"),
    ("name: 3x3\nmatrix: [[1]]\n", r"name must start with a letter"),
    ("family: gausian\n", r"family must be one of box, gaussian, motion, log; got 'gausian'"),
    ("family: gaussian\nparams: {sigma: -1}\n",
     r"bad\.yaml:2: kernel 'bad': bad parameters 'sigma=-1' for gaussian: sigma must be >= 0.01"),
    ("name: g\nfamily: box\nparams: 0\n", r"bad\.yaml:3: kernel 'g': bad parameters '0' for box"),
    ("name: b\nkernels: [bad.yaml]\ncombine: max\n",
     r"bad\.yaml:2: kernel 'b': bank member 'bad\.yaml': "
     r"a bank that refers to itself: bad\.yaml:b -> bad\.yaml:b$"),
    ("name: b\nkernels: [sobel-x, ./bad.yaml:b]\ncombine: max\n",
     r"a bank that refers to itself: bad\.yaml:b -> bad\.yaml:b"),
    ("name: b\nkernels: [other.yml:a:b]\ncombine: max\n",
     r"bank member 'other\.yml:a:b': 'other\.yml:a:b' has too many ':' parts .*FILE\.yaml:NAME"),
    ("matrix: [[[1, 2]], [[1]]]\n", r"channel 2 has shape 1×1 but channel 1 has 1×2"),
    ("- name: a\n  matrix: [[1]]\n- matrix: [[2]]\n", r"a kernel needs a name"),
    ("", r"bad\.yaml: holds no kernels"),
    ("42\n", r"each kernel must be a mapping"),
    # issue 14, item 19: float32 overflow (a black image), and not "sums to 0"
    ("matrix: [[1e308, 1e308]]\nnormalize: true\n",
     r"bad\.yaml:1: kernel 'bad': the matrix value 1e\+308 at row 1, column 1 is larger than "
     r"float32's largest"),
    ("matrix: [[1]]\nscale: 1e39\n", r"bad\.yaml:2: kernel 'bad': scale 1e\+39 is larger"),
    ("matrix: [[1]]\nbias: -1e39\n", r"bad\.yaml:2: kernel 'bad': bias -1e\+39 is larger"),
    ("matrix: [[1e38]]\nscale: 10\n", r"kernel 'bad': the weights \(matrix × scale\) reach"),
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("IMGCONV_KERNEL_PATH", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_readme_example_file(tmp_path):
    write(tmp_path, "my.yaml", EXAMPLE)
    kernel = resolve("my.yaml")
    assert isinstance(kernel, Kernel)
    assert (kernel.name, kernel.scale, kernel.anchor, kernel.output, kernel.tags) == (
        "my-blur", 1 / 16, (1, 1), "clip", ("blur",))
    assert kernel.source == "my.yaml"
    np.testing.assert_array_equal(kernel.weights, resolve("gaussian-blur").weights)
    assert resolve("my.yaml:my-blur") == kernel


def test_multi_kernel_files_lists_and_documents(tmp_path):
    write(tmp_path, "list.yaml", """\
        - name: a
          matrix: "1 2; 3 4"
        - name: b
          matrix: |
            1 0
            0 1/2
          normalize: true
        - name: ab
          kernels: [a, b, {matrix: [[0, 1], [1, 0]]}]
          combine: sum
        """)
    write(tmp_path, "docs.yml", "name: x\nmatrix: [[1e-3]]\n---\nname: y\nmatrix: [[2]]\n")
    np.testing.assert_allclose(resolve("list.yaml:b").weights, [[2 / 3, 0], [0, 1 / 3]])
    bank = resolve("list.yaml:ab")
    assert isinstance(bank, KernelBank)
    assert [k.name for k in bank.kernels] == ["a", "b", "ab.3"]
    assert resolve("docs.yml:x").weights[0, 0] == pytest.approx(1e-3)
    with pytest.raises(KernelError, match=r"list\.yaml holds 3 kernels \(a, b, ab\): name one"):
        resolve("list.yaml")
    with pytest.raises(KernelError, match=r"list\.yaml has no kernel 'c'; it holds a, b, ab"):
        resolve("list.yaml:c")


def test_multi_channel_file(tmp_path):
    write(tmp_path, "rgb.yaml", """\
        matrix:
          - [[1, 0], [0, 0]]
          - [[0, 2], [0, 0]]
          - [[0, 0], [0, 3]]
        """)
    kernel = resolve("rgb.yaml")
    assert kernel.shape == (2, 2, 3) and kernel.channels == 3 and kernel.name == "rgb"
    assert kernel.weights[:, :, 1].tolist() == [[0, 2], [0, 0]]


def test_family_entries(tmp_path, monkeypatch):
    write(tmp_path, "fam.yaml", """\
        - name: soft
          family: gaussian
          params: {sigma: 2}
          output: normalize
        - name: wide
          family: box
          params: 1x7
        - name: g
          family: gaussian
        """)
    soft = resolve("fam.yaml:soft")
    assert soft.shape == (13, 13) and soft.output == "normalize" and soft.name == "soft"
    assert resolve("fam.yaml:wide").shape == (1, 7)
    monkeypatch.setenv("IMGCONV_KERNEL_PATH", str(tmp_path))
    assert resolve("g:sigma=3").shape == (19, 19)


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=[m[:30] for _, m in BAD_FILES])
def test_bad_files(tmp_path, text, message):
    write(tmp_path, "bad.yaml", text)
    with pytest.raises(KernelError, match=message):
        resolve("bad.yaml")


def test_numbers_as_people_write_them(tmp_path):
    # A Unicode minus (pasted from a document), digit groups (Python / YAML 1.1) and an
    # underflow to 0 (as float() does) are all read; see imgconv/kernels/text.py.
    write(tmp_path, "k.yaml",
          "matrix:\n  - [\u22121, 1_000, 1e-400, '\u22121/4']\nscale: \u22122\n")
    kernel = resolve("k.yaml")
    assert kernel.matrix.tolist() == [[-1.0, 1000.0, 0.0, -0.25]] and kernel.scale == -2


def test_bank_cycles_through_files(tmp_path):
    write(tmp_path, "a.yaml", "name: a\nkernels: [b.yaml]\ncombine: max\n")
    write(tmp_path, "b.yaml", f"name: b\nkernels: [{tmp_path / 'a.yaml'}:a]\ncombine: max\n")
    with pytest.raises(KernelError, match=(
        r"^a\.yaml:2: kernel 'a': bank member 'b\.yaml': b\.yaml:2: "
        r".*a bank that refers to itself: a\.yaml:a -> b\.yaml:b -> a\.yaml:a$"
    )):
        resolve("a.yaml")
    write(tmp_path, "self.yaml", f"kernels: [{tmp_path / 'self.yaml'}]\ncombine: sum\n")
    with pytest.raises(KernelError, match=r"refers to itself: self\.yaml:self -> self\.yaml:self"):
        resolve(str(tmp_path / "self.yaml"))
    # The same file twice is no cycle.
    write(tmp_path, "k.yaml", "- name: k\n  matrix: [[1]]\n- name: j\n  kernels: [k.yaml:k, k]\n"
          "  combine: sum\n")
    assert len(resolve("k.yaml:j").kernels) == 2


@pytest.mark.parametrize(("spec", "message"), [
    ("x.yml:a:b", r"'x\.yml:a:b' has too many ':' parts \('a:b' after the file\); "
                  r"a kernel in a file is FILE\.yaml:NAME"),
    ("x.yaml:", r"'x\.yaml:' names no kernel after the ':'"),
    ("x.yaml:a/b", r"'a/b' is not a kernel name"),
])
def test_bad_file_specs(spec, message):
    with pytest.raises(KernelError, match=message):
        resolve(spec)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(KernelError, match=r"kernel file 'nope\.yaml' not found"):
        resolve("nope.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(KernelError, match=r"is a folder"):
        resolve("dir.yaml")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(KernelError, match=r"bin\.yaml: not valid YAML"):
        resolve("bin.yaml")


# --- hostile files (issue 14: items 3, 4 and 8) ----------------------------------------------


def bomb(leaf: str = '"lol"', depth: int = 9, width: int = 9) -> str:
    """A flow list whose aliases expand to ``width ** depth`` leaves ("billion laughs")."""
    text = f"&a0 [{', '.join([leaf] * width)}]"
    for k in range(1, depth):
        text = f"&a{k} [{text}, {', '.join([f'*a{k - 1}'] * (width - 1))}]"
    return text


ALIAS = r"hostile\.yaml:\d+: aliases \(\*name\) repeat more than 100000 values"
# (file contents, expected message): each must fail fast, in one line, with bounded memory.
HOSTILE_FILES = [
    ("name: t\nmatrix: [[1]]\ntags: " + bomb() + "\n", ALIAS),
    ("name: t\nmatrix: " + bomb("1") + "\n", ALIAS),
    ("name: t\nmatrix: [[1, " + bomb("1") + "]]\n", ALIAS),
    ("name: t\ndescription: " + bomb() + "\nmatrix: [[1]]\n", ALIAS),
    ("name: t\nkernels: " + bomb("sobel-x") + "\ncombine: max\n", ALIAS),
    ("name: t\nfamily: box\nparams: " + bomb() + "\n", ALIAS),
    ("- name: t\n  matrix: [[1]]\n  tags: " + bomb() + "\n", ALIAS),
    ("name: t\nmatrix: " + "[" * 300 + "1" + "]" * 300 + "\n",
     r"hostile\.yaml:2: lists and mappings nest more than 32 deep"),
    ("name: t\ntags: " + "[" * 900 + "1" + "]" * 900 + "\nmatrix: [[1]]\n",
     r"nest more than 32 deep"),
    ("name: t\nmatrix: [[1]]\ntags: [1, " + "x" * 100_000 + "]\n", r"tags must be a list of"),
    ("name: 9" + "n" * 100_000 + "\nmatrix: [[1]]\n", r"name must start with a letter"),
    ("name: t\nmatrix: [['" + "9" * 100_000 + "']]\n", r"must be a finite number"),
]


@pytest.mark.parametrize(("text", "message"), HOSTILE_FILES,
                         ids=[f"{i}-{m[:20]}" for i, (_, m) in enumerate(HOSTILE_FILES)])
def test_hostile_files(tmp_path, text, message):
    write(tmp_path, "hostile.yaml", text)
    with pytest.raises(KernelError, match=message) as info:
        resolve("hostile.yaml")
    assert len(str(info.value)) < 400 and "\n" not in str(info.value)


def test_aliases_within_the_budget_are_read(tmp_path):
    write(tmp_path, "rows.yaml", "matrix:\n  - &r [1, 2, 1]\n  - *r\n  - *r\n")
    assert resolve("rows.yaml").matrix.tolist() == [[1, 2, 1]] * 3


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_is_refused_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "fifo.yaml")  # nobody writes it: opening it to read would block
    with pytest.raises(KernelError, match=r"^kernel file 'fifo\.yaml' is not a regular file"):
        resolve("fifo.yaml")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_device_is_refused(tmp_path):
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")  # endless: reading it never stops
    with pytest.raises(KernelError, match=r"'zero\.yaml' is not a regular file"):
        resolve("zero.yaml")


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    with open(tmp_path / "big.yaml", "wb") as f:
        f.truncate(40 * 2**20)  # sparse: 40 MiB of zeros, no disk used
    with pytest.raises(KernelError, match=r"'big\.yaml' is 40\.0 MiB, more than the limit of "
                                          r"32 MiB for a YAML file"):
        resolve("big.yaml")


SIZE_LIMIT = r"more than the limit of 1001"


@pytest.mark.parametrize(("text", "message"), [
    ("matrix:\n" + "  - [0]\n" * 1002,
     r"big\.yaml:1: kernel 'big': matrix has 1002 rows, " + SIZE_LIMIT),
    ("matrix:\n  - [" + "0, " * 5000 + "0]\n",
     r"big\.yaml:2: kernel 'big': matrix row 1 has 5001 numbers, " + SIZE_LIMIT),
    ("matrix: [" + "[[1]], " * 1002 + "[[1]]]\n", r"matrix has 1003 channels, " + SIZE_LIMIT),
    ("matrix: |\n  " + "0 " * 1002 + "\n", r"matrix row 1 has 1002 numbers, " + SIZE_LIMIT),
])
def test_file_kernels_have_the_family_size_limit(tmp_path, text, message):
    write(tmp_path, "big.yaml", text)
    with pytest.raises(KernelError, match=message):
        resolve("big.yaml")


def test_every_kernel_has_the_size_limit():
    from imgconv.kernels import families, model

    assert families.MAX_SIZE is model.MAX_SIZE == 1001
    with pytest.raises(KernelError, match=r"matrix row 1 has 1002 numbers, " + SIZE_LIMIT):
        resolve("0 " * 1002)
    with pytest.raises(KernelError, match=r"kernel 'k': the matrix is 1×1002, larger than the "
                                          r"limit of 1001 a side"):
        Kernel("k", np.zeros((1, 1002)))
    assert Kernel("k", np.zeros((1001, 1))).shape == (1001, 1)


def test_plain_numbers_take_the_fast_path_and_read_as_yaml_does(tmp_path, monkeypatch):
    import yaml

    import imgconv.kernels.text as text

    values = ["010", "1_000", "0x1f", "1.5", "-0", "+3", ".5", "1e3", "1.0e+3", "0b11", "1:30",
              "-2.", "00", "7"]
    write(tmp_path, "odd.yaml", f"matrix: [[{', '.join(values)}]]\n")
    expected = [float(text.parse_number(v, "v")) for v in yaml.safe_load(f"[{', '.join(values)}]")]
    assert resolve("odd.yaml").matrix.tolist() == [expected]
    # a large matrix of plain numbers never reaches the per-value checks
    calls = []
    monkeypatch.setattr(text, "parse_number", lambda *a, **k: calls.append(a) or 0.0)
    rows = "".join(f"  - [{', '.join(str((i * j) % 7 - 3) for j in range(301))}]\n"
                   for i in range(301))
    write(tmp_path, "big.yaml", "matrix:\n" + rows.replace(", 2,", ", 2.5,"))
    assert resolve("big.yaml").shape == (301, 301) and calls == []


# --- search path ------------------------------------------------------------------------------


def test_search_path_order(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    monkeypatch.setenv("IMGCONV_KERNEL_PATH", f"{one}{os.pathsep}{two}")
    assert search_path() == [one, two, tmp_path / "config" / "imgconv" / "kernels"]
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert search_path()[-1] == tmp_path / "home" / ".config" / "imgconv" / "kernels"


def test_first_match_wins_and_list_says_so(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    config = tmp_path / "config" / "imgconv" / "kernels"
    write(one, "edge.yaml", "name: sobel-x\nmatrix: [[1, 2, 3]]\ntags: [mine]\n")
    write(two, "edge.yaml", "name: sobel-x\nmatrix: [[4, 5, 6]]\n")
    write(config, "k.yaml", "- name: mine\n  matrix: [[7]]\n- name: sobel\n  matrix: [[8]]\n")
    monkeypatch.setenv("IMGCONV_KERNEL_PATH", f"{one}{os.pathsep}{two}")
    assert resolve("sobel-x").weights.tolist() == [[1, 2, 3]]
    assert resolve("sobel-x").source == str(one / "edge.yaml")
    assert resolve("mine").weights.tolist() == [[7]]
    assert isinstance(resolve("sobel"), Kernel)  # the user's kernel shadows the built-in bank
    rows = {r.name: r for r in catalog()}
    assert rows["sobel-x"].source == str(one)
    assert rows["sobel-x"].shadows == (str(two), "built-in")
    assert rows["sobel"].shadows == ("built-in",) and rows["sobel"].kind == "kernel"
    assert rows["sobel-y"].shadows == ()
    # A built-in bank names its members on the search path, so it picks up the user's sobel-x.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(KernelError, match=r"all kernels must have the same shape"):
        resolve("sobel")


def test_user_bank_uses_its_own_file_first(tmp_path, monkeypatch):
    folder = tmp_path / "k"
    write(folder, "grad.yaml", """\
        - name: gx
          matrix: [[-1, 1]]
        - name: grad
          kernels: [gx, {name: gy, matrix: [[1, -1]]}]
          combine: max
        """)
    first = tmp_path / "first"
    write(first, "other.yaml", "name: gx\nmatrix: [[5, 5]]\n")
    monkeypatch.setenv("IMGCONV_KERNEL_PATH", f"{first}{os.pathsep}{folder}")
    bank = resolve("grad")
    assert [k.name for k in bank.kernels] == ["gx", "gy"]
    assert bank.kernels[0].weights.tolist() == [[-1, 1]]
    assert resolve("gx").weights.tolist() == [[5, 5]]
    assert bank.source == str(folder / "grad.yaml")


def test_duplicate_names_across_files_of_a_folder(tmp_path, monkeypatch):
    folder = tmp_path / "k"
    write(folder, "a.yaml", "name: same\nmatrix: [[1]]\n")
    write(folder, "b.yaml", "name: same\nmatrix: [[2]]\n")
    monkeypatch.setenv("IMGCONV_KERNEL_PATH", str(folder))
    with pytest.raises(KernelError, match=r"b\.yaml:1: kernel 'same': 'same' is also defined in"):
        resolve("sobel-x")


def test_a_missing_folder_on_the_path_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCONV_KERNEL_PATH", str(tmp_path / "missing"))
    assert resolve("identity").weights[1, 1] == 1


def _deny(monkeypatch, method, name):
    """Make ``Path.<method>`` raise PermissionError for ``name`` (tests run as root,
    where chmod 000 denies nothing)."""
    real = getattr(Path, method)

    def denied(self, *args, **kwargs):
        if self.name == name:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, denied)


def _user_folder_with(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    write(folder, "good.yaml", "name: good\nmatrix: [[2]]\n")
    write(folder, "locked.yaml", "name: locked\nmatrix: [[3]]\n")
    monkeypatch.setenv("IMGCONV_KERNEL_PATH", str(folder))
    return folder


def test_an_unreadable_folder_on_the_path_is_skipped_with_a_warning(tmp_path, monkeypatch):
    folder = _user_folder_with(tmp_path, monkeypatch)
    _deny(monkeypatch, "iterdir", "mine")
    with pytest.warns(imgconv.errors.ImgconvWarning,
                      match=rf"^kernel folder '{folder}' cannot be read \(Permission denied\); "
                            r"skipped$"):
        assert resolve("sobel-x").shape == (3, 3)
    with pytest.warns(imgconv.errors.ImgconvWarning):
        assert "sobel" in [e.name for e in catalog()]


def test_an_unreadable_file_in_a_folder_is_skipped_with_a_warning(tmp_path, monkeypatch):
    _user_folder_with(tmp_path, monkeypatch)
    monkeypatch.setattr(imgconv.kernels.library, "_FILE_CACHE", {})
    real = imgconv.kernels.library.read_text

    def read_text(path, *args):
        if Path(path).name == "locked.yaml":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args)

    monkeypatch.setattr(imgconv.kernels.library, "read_text", read_text)
    with pytest.warns(imgconv.errors.ImgconvWarning,
                      match=r"kernel file '.*locked\.yaml' cannot be read: Permission denied; "
                            r"skipped"):
        assert resolve("good").weights.tolist() == [[2.0]]
    with pytest.raises(KernelError, match="unknown kernel 'locked'"), \
            pytest.warns(imgconv.errors.ImgconvWarning):
        resolve("locked")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads a chmod 000 folder")
def test_a_chmod_000_folder_is_skipped(tmp_path, monkeypatch):
    folder = _user_folder_with(tmp_path, monkeypatch)
    folder.chmod(0)
    try:
        with pytest.warns(imgconv.errors.ImgconvWarning, match="cannot be read"):
            assert resolve("sobel-x").shape == (3, 3)
    finally:
        folder.chmod(0o755)


def test_edited_files_are_reread(tmp_path):
    path = write(tmp_path, "k.yaml", "matrix: [[1]]\n")
    assert resolve("k.yaml").weights.tolist() == [[1]]
    path.write_text("matrix: [[2, 3]]\n")
    assert resolve("k.yaml").weights.tolist() == [[2, 3]]


# --- round trips ------------------------------------------------------------------------------

finite = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda v: v == 0 or abs(v) > 1e-300)


@st.composite
def kernels(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    channels = draw(st.sampled_from([None, 2]))
    shape = (kh, kw) if channels is None else (kh, kw, channels)
    matrix = np.array(draw(st.lists(finite, min_size=int(np.prod(shape)),
                                    max_size=int(np.prod(shape))))).reshape(shape)
    return Kernel(
        name=draw(st.from_regex(r"[a-z][a-z0-9\-]{0,8}", fullmatch=True)),
        matrix=matrix,
        scale=draw(finite.filter(bool)),
        bias=draw(finite),
        anchor=draw(st.none() | st.tuples(st.integers(0, kh - 1), st.integers(0, kw - 1))),
        output=draw(st.none() | st.sampled_from(["clip", "abs", "offset", "normalize"])),
        description=draw(st.text("abc xyz:#-'\"", max_size=12)).strip(),
        tags=tuple(draw(st.lists(st.sampled_from(["blur", "edge", "x-y"]), max_size=2))),
        source="x.yaml",
    )


@given(kernels())
def test_yaml_round_trip(tmp_path_factory, kernel):
    path = tmp_path_factory.mktemp("rt") / "x.yaml"
    path.write_text(dump(kernel), encoding="utf-8")
    back = resolve(str(path))
    assert back == dataclasses.replace(kernel, source=str(path))


@pytest.mark.parametrize("name", ["sobel", "kirsch", "gaussian-blur", "gaussian:sigma=1.5"])
def test_builtins_round_trip(tmp_path, name):
    item = resolve(name)
    (tmp_path / "rt.yaml").write_text(dump(item), encoding="utf-8")
    back = resolve("rt.yaml")
    if isinstance(item, KernelBank):
        assert [k.weights.tolist() for k in back.kernels] == [
            k.weights.tolist() for k in item.kernels]
        assert back.combine == item.combine
    else:
        np.testing.assert_array_equal(back.weights, item.weights)


# --- the shipped library ----------------------------------------------------------------------


def test_builtins_are_the_top_level_kernels_folder():
    shipped = sorted(t.name for t in builtin_dir().iterdir() if t.name.endswith(".yaml"))
    assert shipped == sorted(p.name for p in (REPO / "kernels").glob("*.yaml"))


def test_installed_package_ships_every_kernel():
    package = Path(imgconv.__file__).resolve().parent
    if package.parent == REPO:
        pytest.skip("imgconv is imported from the checkout (editable install)")
    data = importlib.resources.files("imgconv") / "data" / "kernels"
    assert data.is_dir(), "the wheel does not ship imgconv/data/kernels"
    shipped = sorted(t.name for t in data.iterdir())
    # every YAML file, and their index (imgconv.kernels.index)
    assert shipped == sorted(p.name for p in (REPO / "kernels").iterdir()
                             if p.suffix in (".yaml", ".json"))
    assert "index.json" in shipped
    for name in shipped:
        assert (data / name).read_text("utf-8") == (REPO / "kernels" / name).read_text("utf-8")
