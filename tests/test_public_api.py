"""The public surface: every exported name is deliberate, documented and reports its home."""

from __future__ import annotations

import ast
import inspect
import pathlib
import types

import pytest

import trio_raft
import trio_raft.kv
import trio_raft.testing

PACKAGE = pathlib.Path(trio_raft.__file__).parent


@pytest.mark.parametrize("module", [trio_raft, trio_raft.testing, trio_raft.kv])
def test_public_names_have_docstrings_and_public_module(module: types.ModuleType) -> None:
    for name in dir(module):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType) or getattr(obj, "__module__", "") == "builtins":
            continue  # submodules, and aliases of builtins such as NodeId = str
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == module.__name__, name
            assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_core_is_pure() -> None:
    """The Raft rules import neither trio nor anything that does I/O, time or randomness."""
    banned = {"trio", "time", "random", "socket", "os", "asyncio"}
    for path in (PACKAGE / "_core").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_library_code_reads_no_wall_clock_and_no_global_random() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for forbidden in ("time.time(", "time.monotonic(", "random.random(", "random.randint("):
            assert forbidden not in text, f"{path.relative_to(PACKAGE)} uses {forbidden}"


def test_documented_constant_values_match_the_code() -> None:
    """Every ``.. py:data::`` with a ``:value:`` in the reference pages shows the value the
    code really has (a value written by hand goes stale when the code grows)."""
    docs = pathlib.Path(__file__).parent.parent / "docs" / "source"
    checked = 0
    for page in sorted(docs.glob("reference*.rst")):
        module: types.ModuleType | None = None
        name: str | None = None
        for line in page.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(".. module::"):
                module = __import__(stripped.split("::")[1].strip(), fromlist=["_"])
            elif stripped.startswith(".. py:data::"):
                name = stripped.split("::")[1].strip()
            elif stripped.startswith(":value:") and name is not None:
                assert module is not None, f"{page.name}: {name} before any module directive"
                documented = ast.literal_eval(stripped.removeprefix(":value:").strip())
                actual = getattr(module, name)
                assert documented == actual, f"{page.name}: {name} is documented as {documented!r}"
                checked += 1
                name = None
    assert checked >= 2
