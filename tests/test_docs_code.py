"""The code of the tutorial and the simulator guide is written out in the pages themselves, so
that they read whole on a code host that renders reStructuredText without Sphinx; the code
itself lives, and is tested, in ``docs/source/examples/`` and ``tests/test_examples.py``.

Each copied block follows a comment that names its source, as ``literalinclude`` would::

    .. code from: examples/counter.py pyobject=Counter

    .. code-block:: python

        class Counter:
            ...

(paths relative to the page; ``pyobject=NAME``, or ``start-at="..."``, ``start-after="..."``
and ``end-before="..."``, or nothing for the whole file). The tests below fail when a copy
differs from its source; ``python -m tests.test_docs_code`` rewrites the copies.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "source"
PAGES = ("tutorial.rst", "simulator.rst")
MARKER = re.compile(r"^\.\. code from: (?P<spec>.+)$")
INDENT = "    "


def source_code(page: Path, spec: str) -> str:
    """The code a marker's ``spec`` names, as ``literalinclude`` would include it."""
    path, *options = shlex.split(spec)
    text = (page.parent / path).read_text(encoding="utf-8")
    lines = text.splitlines()
    settings = dict(option.split("=", 1) for option in options)
    if "pyobject" in settings:
        name = settings["pyobject"]
        node = next(
            n
            for n in ast.parse(text).body
            if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and n.name == name
        )
        assert node.end_lineno is not None
        lines = lines[node.lineno - 1 : node.end_lineno]
    start = 0
    if "start-at" in settings:
        start = next(i for i, line in enumerate(lines) if settings["start-at"] in line)
    elif "start-after" in settings:
        start = next(i for i, line in enumerate(lines) if settings["start-after"] in line) + 1
    end = len(lines)
    if "end-before" in settings:
        end = next(
            i for i, line in enumerate(lines) if i >= start and settings["end-before"] in line
        )
    return "\n".join(lines[start:end]).strip("\n")


def blocks(page: Path) -> list[tuple[str, int, int]]:
    """Each marker's spec and the line range ``[first, end)`` of its code block's body."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    for i, line in enumerate(lines):
        match = MARKER.match(line)
        if not match:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        assert lines[j].startswith(".. code-block:: python"), f"{page}:{j + 1}: no code block"
        first = j + 1
        while first < len(lines) and not lines[first].strip():
            first += 1
        end = first
        while end < len(lines) and (not lines[end].strip() or lines[end].startswith(INDENT)):
            end += 1
        while not lines[end - 1].strip():
            end -= 1
        found.append((match["spec"], first, end))
    return found


def written_code(page: Path, first: int, end: int) -> str:
    lines = page.read_text(encoding="utf-8").splitlines()[first:end]
    return "\n".join(line.removeprefix(INDENT) for line in lines)


def sync(page: Path) -> None:
    """Rewrite every copied block of ``page`` from its source."""
    lines = page.read_text(encoding="utf-8").splitlines()
    for spec, first, end in reversed(blocks(page)):
        code = source_code(page, spec).splitlines()
        lines[first:end] = [f"{INDENT}{line}" if line.strip() else "" for line in code]
    page.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("name", PAGES)
def test_the_pages_show_their_code_without_sphinx(name: str) -> None:
    text = (DOCS / name).read_text(encoding="utf-8")
    assert "literalinclude" not in text  # a code host shows nothing for it
    assert blocks(DOCS / name)


@pytest.mark.parametrize("name", PAGES)
def test_each_copy_is_its_tested_source(name: str) -> None:
    page = DOCS / name
    for spec, first, end in blocks(page):
        assert written_code(page, first, end) == source_code(page, spec), (
            f"{page}:{first + 1} differs from {spec}; run `python -m tests.test_docs_code`"
        )


@pytest.mark.parametrize("name", PAGES)
def test_every_python_block_compiles(name: str) -> None:
    lines = (DOCS / name).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith(".. code-block:: python"):
            end = i + 1
            while end < len(lines) and (not lines[end].strip() or lines[end].startswith(INDENT)):
                end += 1
            code = "\n".join(line.removeprefix(INDENT) for line in lines[i + 1 : end])
            compile(code, f"{name}:{i + 1}", "exec", flags=0, dont_inherit=True)


if __name__ == "__main__":
    for name in sys.argv[1:] or PAGES:
        sync(DOCS / name)
