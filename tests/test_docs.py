"""The documentation's examples run, and the documentation builds.

Every ``.. code-block:: python`` block in ``docs/*.rst`` is a complete
program; each runs in a fresh interpreter, in its own temporary directory,
and must exit with status 0. Fragments that are not meant to run use
``.. code-block:: text`` (or another language) instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Pages that teach by example: each must hold at least one runnable block.
PAGES_WITH_EXAMPLES = (
    "getting-started.rst",
    "tracking.rst",
    "operations.rst",
    "persistence.rst",
    "drivers.rst",
)

EXAMPLE_TIMEOUT = 120  # seconds, per example
BUILD_TIMEOUT = 300

_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block::[ \t]*python3?[ \t]*$")
_OPTION = re.compile(r"^[ \t]+:[\w-]+:")


@dataclass(frozen=True)
class Example:
    page: str
    number: int  # 1-based among the page's python blocks
    line: int  # 1-based line of the directive
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.number}"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def parse_examples(page: Path) -> list[Example]:
    """The ``.. code-block:: python`` blocks of one reST page, in order.

    A block is the directive line, optional ``:option:`` lines, then every
    following line that is blank or indented deeper than the directive.
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    examples: list[Example] = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if not match:
            i += 1
            continue
        directive_line = i + 1
        base = len(match["indent"])
        i += 1
        while i < len(lines) and _OPTION.match(lines[i]) and _indent(lines[i]) > base:
            i += 1
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            body.append(lines[i])
            i += 1
        code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        examples.append(Example(page.name, len(examples) + 1, directive_line, code))
    return examples


def parse_markdown_examples(page: Path) -> list[Example]:
    """The fenced ```python blocks of a Markdown page (the README), in order."""
    examples: list[Example] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            code = "\n".join(lines[start:number - 1]) + "\n"
            examples.append(Example(page.name, len(examples) + 1, start, code))
            start = None
    return examples


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.rst"))


ALL_EXAMPLES = [example for page in _pages() for example in parse_examples(page)]
ALL_EXAMPLES += parse_markdown_examples(ROOT / "README.md")


def test_parser_reads_blocks(tmp_path: Path) -> None:
    sample = textwrap.dedent(
        """\
        Title
        =====

        .. code-block:: python
           :caption: one

           print("a")

           print("b")
        after

        * item

          .. code-block:: python

             x = 1
        .. code-block:: text

           not python
        """
    )
    path = tmp_path / "sample.rst"
    path.write_text(sample, encoding="utf-8")
    found = parse_examples(path)
    assert [e.code for e in found] == ['print("a")\n\nprint("b")\n', "x = 1\n"]
    assert [e.line for e in found] == [4, 14]


def test_readme_has_its_example() -> None:
    assert parse_markdown_examples(ROOT / "README.md"), "README.md lost its example"


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES)
def test_page_has_examples(page: str) -> None:
    path = DOCS / page
    assert path.is_file(), f"{page} is missing from docs/"
    assert parse_examples(path), f"{page} has no runnable '.. code-block:: python' example"


def _example_environment() -> dict[str, str]:
    """This checkout's aiocinder first on the path; no bytecode left behind."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.mark.timeout(EXAMPLE_TIMEOUT + 30)
@pytest.mark.parametrize("example", ALL_EXAMPLES, ids=[e.id for e in ALL_EXAMPLES])
def test_example_runs(example: Example, tmp_path: Path) -> None:
    assert "asyncio.run(main())" in example.code, (
        f"{example.id} (line {example.line}) is not a complete program ending with "
        "asyncio.run(main()); make it one, or use '.. code-block:: text' for a fragment"
    )
    script = tmp_path / f"{Path(example.page).stem}_{example.number}.py"
    script.write_text(example.code, encoding="utf-8")
    try:
        result = subprocess.run(
            # -X dev: asyncio debug mode and ResourceWarnings; -W error: any
            # warning the example triggers is a failure.
            [sys.executable, "-X", "dev", "-W", "error", str(script)],
            cwd=tmp_path,
            env=_example_environment(),
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        raw: str | bytes = exc.stderr or ""  # may be bytes, even with text=True
        stderr = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        pytest.fail(
            f"{example.id} (docs/{example.page} line {example.line}) did not finish in "
            f"{EXAMPLE_TIMEOUT} s\nstderr:\n{stderr}"
        )
    if result.returncode != 0:
        print(result.stdout)
        print(result.stderr, file=sys.stderr)
    assert result.returncode == 0, (
        f"{example.id} (docs/{example.page} line {example.line}) exited with "
        f"{result.returncode}\nstderr:\n{result.stderr}"
    )


@pytest.mark.timeout(BUILD_TIMEOUT + 30)
def test_docs_build(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-E",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(tmp_path / "html"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "html" / "index.html").is_file()
