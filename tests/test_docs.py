"""The documentation: the generated CLI reference is current and every relative link resolves
(to a file, and to a heading when it names one)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# [text](target) and ![alt](target); the target ends at the first space or ')'
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _load_generator() -> ModuleType:
    path = ROOT / "docs" / "make_cli_reference.py"
    spec = importlib.util.spec_from_file_location("make_cli_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current() -> None:
    generator = _load_generator()
    committed = generator.TARGET.read_text(encoding="utf-8")
    fresh = generator.render()
    assert committed == fresh, (
        "docs/cli-reference.md is stale (a command's --help changed): "
        f"run `{generator.REGENERATE}` and commit the result"
    )


def test_cli_reference_is_plain_text() -> None:
    text = (ROOT / "docs" / "cli-reference.md").read_text(encoding="utf-8")
    assert "\x1b" not in text
    assert not [line for line in text.splitlines() if line != line.rstrip()]


def _relative_links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = [match.group(1) for match in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    headings = re.findall(r"^#+ +(.+?) *$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files(page: Path) -> None:
    missing = []
    for target in [*_relative_links(page), *_anchor_links(page)]:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)}: links to missing files or headings: {missing}"


def _anchor_links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return [m.group(1) for m in LINK.finditer(text) if m.group(1).startswith("#")]


def test_link_check_sees_links() -> None:
    # guards the regex: the README links into docs/ and shows the gallery
    links = _relative_links(ROOT / "README.md")
    assert any(link.startswith("docs/") for link in links)
    assert any(link.startswith("sample_images/gallery/") for link in links)


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = re.search(r"pip\" install --quiet ('[^']+')", ci)
    pytest_args = re.search(r"/bin/pytest\" (.*)", ci)
    assert install and pytest_args
    command = (
        f"python3 -m venv .venv && .venv/bin/pip install {install.group(1)} "
        f"&& .venv/bin/pytest {pytest_args.group(1)}"
    )
    assert command in readme
    # development.md quotes it as "the README's test command" too
    development = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    assert command in development
