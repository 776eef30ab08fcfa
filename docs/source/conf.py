"""Sphinx configuration for trio-raft.

The docs build with ``-W`` and ``nitpicky = True``: every cross-reference must resolve, and any
warning fails the build (``nox -s docs``).

Intersphinx (links into the Python and trio docs) needs the network at build time, and the build
machines may be offline, so it is off unless ``TRIO_RAFT_DOCS_INTERSPHINX=1`` is set. While it is
off, references to names outside ``trio_raft`` (``trio.Nursery``, ``collections.abc.Callable``,
...) cannot resolve and are ignored below; references to ``trio_raft`` names are always checked.
"""

from __future__ import annotations

import os
from importlib import metadata

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
nitpick_ignore: list[tuple[str, str]] = []

# -- autodoc / napoleon -------------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_use_rtype = False

# -- HTML ---------------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"trio-raft {release}"
