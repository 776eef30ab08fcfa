"""Sphinx configuration for trio-raft.

The docs build with ``-W`` and ``nitpicky = True``: every cross-reference must resolve, and any
warning fails the build (``nox -s docs``).

Intersphinx (links into the Python and trio docs) needs the network at build time, and the build
machines may be offline, so it is off unless ``TRIO_RAFT_DOCS_INTERSPHINX=1`` is set. While it is
off, references to names outside ``trio_raft`` (``trio.Nursery``, ``collections.abc.Callable``,
...) cannot resolve and are ignored below; references to ``trio_raft`` names are always checked.
"""

from __future__ import annotations

import ast
import enum
import os
import re
import sys
from importlib import metadata
from pathlib import Path

import attrs
from sphinx.application import Sphinx
from sphinx.ext.napoleon import _process_docstring as napoleon_process_docstring

import trio_raft
import trio_raft.kv
import trio_raft.testing

project = "trio-raft"
author = "The trio-raft authors"
copyright = "The trio-raft authors"
try:
    release = metadata.version("trio-raft")
except metadata.PackageNotFoundError:  # building from a checkout without installing it
    release = "0+unknown"
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
]

# -- Cross-references ---------------------------------------------------------------------------

nitpicky = True
default_role = "py:obj"

INTERSPHINX = os.environ.get("TRIO_RAFT_DOCS_INTERSPHINX") == "1"

if INTERSPHINX:
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "trio": ("https://trio.readthedocs.io/en/stable", None),
        "attrs": ("https://www.attrs.org/en/stable", None),
    }
    nitpick_ignore_regex: list[tuple[str, str]] = []
else:
    intersphinx_mapping = {}
    # Offline: any dotted target outside trio_raft is external and cannot resolve.
    # Builtins (int, bytes, None, ...) and bare ``typing`` names resolve without intersphinx.
    nitpick_ignore_regex = [(r"py:.*", r"(?!trio_raft\b)[A-Za-z_]\w*\..+")]

# Add ("py:class", "name") pairs here only for targets that are documented nowhere, with a reason.
nitpick_ignore: list[tuple[str, str]] = [
    # The TypedDict behind ``MemoryNetwork.set_link(**changes)``; its keys are listed in the
    # docstring of set_link, and it is not exported.
    ("py:class", "trio_raft.testing._network.LinkChanges"),
    # The type variable of ``BlockingKVClient.run`` (the result type of the function given).
    ("py:class", "trio_raft.kv._blocking.T"),
]

# -- autodoc / napoleon -------------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Show defaults as written in the source (``KVStateMachine``, not ``<class '...'>``); the
# generated ``__init__`` of attrs classes is fixed up by _attrs_defaults below.
autodoc_preserve_defaults = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_use_rtype = False

# -- HTML ---------------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"trio-raft {release}"

# -- Fix-ups for autodoc ------------------------------------------------------------------------


def _restore_defining_modules() -> None:
    """Point every public class back at the private module that defines it (docs build only).

    ``trio_raft`` rewrites the ``__module__`` of its re-exported names to the public package, as
    trio does, so tracebacks and reprs say ``trio_raft.Entry``. autodoc, however, reads attribute
    docstrings (attrs fields, enum members) and the source order of members from the module named
    by ``__module__``, i.e. from ``trio_raft/__init__.py``, where they are not. With the defining
    module restored, autodoc finds them, and records the private path as the class's canonical
    name, so a reference to either path resolves. The documented name stays the public one.
    """
    public = {
        id(obj): obj
        for package in (trio_raft, trio_raft.testing, trio_raft.kv)
        for obj in vars(package).values()
        if isinstance(obj, type) and obj.__module__ == package.__name__
    }
    # Importing the public packages imported every module that defines a public class.
    private = {n: m for n, m in sys.modules.items() if n.startswith("trio_raft.") and "._" in n}
    for name, module in sorted(private.items()):
        if getattr(module, "__file__", None) is None:
            continue
        for node in ast.parse(Path(module.__file__).read_text(encoding="utf-8")).body:
            obj = getattr(module, node.name, None) if isinstance(node, ast.ClassDef) else None
            if obj is not None and id(obj) in public:
                obj.__module__ = name


_restore_defining_modules()


def _skip_napoleon_for_attributes(app: Sphinx) -> None:
    """Leave attribute and property docstrings to plain reST.

    Napoleon reads the first line of an attribute docstring as ``type: description``, so prose
    such as ``PreVote (thesis §9.6): a node must ...`` would become a broken type reference. Our
    attributes take their types from annotations, and their docstrings are prose.
    """
    listeners = app.events.listeners["autodoc-process-docstring"]
    for listener in list(listeners):
        if listener.handler is napoleon_process_docstring:
            app.disconnect(listener.id)

    def process(
        app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
    ) -> None:
        if what not in ("attribute", "property", "data"):
            napoleon_process_docstring(app, what, name, obj, options, lines)

    app.connect("autodoc-process-docstring", process)


def _format_default(value: object) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, attrs.Factory):
        return "..."  # computed per instance; "..." keeps the signature parseable
    return repr(value)


def _attrs_defaults(
    app: Sphinx, what: str, name: str, obj: object, options: object, signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:  # fmt: skip
    """Show the defaults of an attrs class by value.

    With ``autodoc_preserve_defaults``, the defaults of an attrs class come from the source of
    its generated ``__init__``: ``attr_dict['term'].default``, or ``NOTHING`` for a factory
    (shown as ``...``, as in a stub).
    """
    if signature is None or not (isinstance(obj, type) and attrs.has(obj)):
        return None
    defaults = {f.name: _format_default(f.default) for f in attrs.fields(obj)}
    signature = re.sub(r"attr_dict\['(\w+)'\]\.default", lambda m: defaults[m[1]], signature)
    signature = re.sub(r"\b(\w+)(: [^=]+?)? = NOTHING", lambda m: m[0][:-7] + "...", signature)
    return signature, return_annotation


def setup(app: Sphinx) -> None:
    app.connect("builder-inited", _skip_napoleon_for_attributes)
    app.connect("autodoc-process-signature", _attrs_defaults)
