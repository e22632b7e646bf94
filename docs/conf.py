"""Sphinx configuration of the asyncconnmgr documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (warnings are errors).

Sphinx rather than MkDocs: autodoc reads the docstrings and the type hints from the code
itself, so the API reference cannot drift from it; intersphinx links anyio's, trio's and
Python's own objects; and MyST lets every page be written in Markdown all the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # the package of this checkout, not an installed copy
sys.path.insert(0, str(HERE / "_ext"))

import asyncconnmgr  # noqa: E402

project = "asyncconnmgr"
author = "asyncconnmgr developers"
copyright = "asyncconnmgr developers"
release = asyncconnmgr.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "asyncconnmgr_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# Docstrings write `name` for the names they mention: make that a cross-reference.
default_role = "py:obj"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": False}
autodoc_preserve_defaults = True
# Optional dependencies: the modules that use them are documented without them installed.
autodoc_mock_imports = [
    "libp2p",
    "multiaddr",
    "prometheus_client",
    "opentelemetry",
    "matplotlib",
]

# intersphinx tries each project's site first and falls back to the small inventory kept
# in docs/_inventories (the names these pages use), so a build without network still links.
intersphinx_mapping = {
    "python": (
        "https://docs.python.org/3",
        (None, str(HERE / "_inventories" / "python.inv")),
    ),
    "anyio": (
        "https://anyio.readthedocs.io/en/stable",
        (None, str(HERE / "_inventories" / "anyio.inv")),
    ),
    "trio": (
        "https://trio.readthedocs.io/en/stable",
        (None, str(HERE / "_inventories" / "trio.inv")),
    ),
}
intersphinx_timeout = 10

html_theme = "furo"
html_title = f"asyncconnmgr {release}"
html_static_path = ["_static"]
