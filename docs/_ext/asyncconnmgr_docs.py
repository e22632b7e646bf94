"""Sphinx helpers for the asyncconnmgr documentation.

- ``if-importable``: a directive whose content (autodoc directives, typically) is rendered
  only when its argument, a module (``asyncconnmgr.sim``) or a module attribute
  (``asyncconnmgr:DiversityPolicy``), can be imported; otherwise it renders a short note.
  So the reference may name parts of the package that a given version does not have yet,
  and the build (``-W``) does not fail on them.
- Cross-references to a private module's name (``asyncconnmgr._models.TrimResult``, as
  type hints resolve) are sent to the public name it is exported under.
- A bare name in a signature or a docstring (``ConnManager``) that the current module does
  not document is looked up at the package root first (``asyncconnmgr.ConnManager``), not
  fuzzily among every object of that name (``asyncconnmgr.abc.ConnManager`` too).
- The docstrings' own layout, a line ending with a colon directly followed by an indented
  block of ``name: description`` lines (``Arguments:``), becomes a bullet list.
- Every name in the ``__all__`` of a public module that the build can import must be
  documented somewhere: a name missing from the reference is a warning (an error with -W).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

from docutils import nodes
from docutils.nodes import Element, Node
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.ext.autodoc.mock import mock
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

#: The modules whose `__all__` is the public API (the rest of the package is private).
PUBLIC_MODULES = (
    "asyncconnmgr",
    "asyncconnmgr.abc",
    "asyncconnmgr.testing",
    "asyncconnmgr.streams",
    "asyncconnmgr.metrics",
    "asyncconnmgr.libp2p",
    "asyncconnmgr.sim",
)


def _import(app: Sphinx, target: str) -> Any:
    """The module or attribute `target` names ("pkg.mod" or "pkg.mod:attr"), imported with
    the optional dependencies mocked as autodoc mocks them; None if it cannot be."""
    module_name, _, attr = target.partition(":")
    try:
        with mock(app.config.autodoc_mock_imports):
            module = importlib.import_module(module_name)
    except ImportError:
        return None
    if not attr:
        return module
    return getattr(module, attr, None)


class IfImportable(SphinxDirective):
    """``if-importable`` (see the module docstring)."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[Node]:
        target = self.arguments[0]
        if _import(self.env.app, target) is not None:
            container = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, container)
            return list(container.children)
        name = target.replace(":", ".")
        note = nodes.note()
        note += nodes.paragraph(
            "", "", nodes.literal(name, name), nodes.Text(" is not in this version of the package.")
        )
        return [note]


def _public_names(app: Sphinx) -> Iterator[tuple[str, str, Any]]:
    """(public module, name, object) for every name exported by an importable public module."""
    for module_name in PUBLIC_MODULES:
        module = _import(app, module_name)
        if module is None:
            continue
        for name in getattr(module, "__all__", ()):
            yield module_name, name, getattr(module, name, None)


def _private_to_public(app: Sphinx) -> dict[str, str]:
    """``asyncconnmgr._models.TrimResult`` -> ``asyncconnmgr.TrimResult``, and so on."""
    mapping: dict[str, str] = {}
    for module_name, name, obj in _public_names(app):
        home = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if isinstance(home, str) and isinstance(qualname, str):
            mapping.setdefault(f"{home}.{qualname}", f"{module_name}.{name}")
    return mapping


def _on_builder_inited(app: Sphinx) -> None:
    app.env.asyncconnmgr_public = _private_to_public(app)  # type: ignore[attr-defined]


def _on_missing_reference(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: Element
) -> Element | None:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    public = getattr(env, "asyncconnmgr_public", {}).get(target)
    if public is None:
        return None
    domain = env.get_domain("py")
    resolved: Element | None = domain.resolve_xref(
        env, node.get("refdoc", ""), app.builder, node.get("reftype", "obj"), public, node, contnode
    )
    return resolved


class PreferPackageRoot(SphinxPostTransform):
    """Bare names resolve in the current module, else at the package root (see above)."""

    default_priority = 5  # before the references are resolved (10)

    def run(self, **kwargs: Any) -> None:
        objects = self.env.get_domain("py").objects  # type: ignore[attr-defined]
        for node in self.document.findall(pending_xref):
            if node.get("refdomain") != "py":
                continue
            target = node.get("reftarget", "")
            if not target or "." in target or target.startswith("~"):
                continue
            module = node.get("py:module") or ""
            klass = node.get("py:class") or ""
            local = [f"{module}.{klass}.{target}", f"{module}.{target}"]
            if any(name in objects for name in local):
                continue
            root = f"asyncconnmgr.{target}"
            if root in objects:
                node["reftarget"] = root
                if "refspecific" in node:
                    del node["refspecific"]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _colon_blocks_as_lists(lines: list[str]) -> list[str]:
    """A line ending with one colon followed at once by a more indented block: the block's
    items (a line at its first indentation starts one; deeper lines continue it) become a
    bullet list after a blank line."""
    out: list[str] = []
    at = 0
    while at < len(lines):
        line = lines[at]
        out.append(line)
        at += 1
        stripped = line.rstrip()
        if not stripped.endswith(":") or stripped.endswith("::") or at >= len(lines):
            continue
        base = _indent(line)
        first = lines[at]
        if not first.strip() or _indent(first) <= base:
            continue
        item_indent = _indent(first)
        items: list[str] = []
        while at < len(lines) and lines[at].strip() and _indent(lines[at]) > base:
            text = lines[at].strip()
            if _indent(lines[at]) <= item_indent or not items:
                items.append(text)
            else:
                items[-1] += " " + text
            at += 1
        out.append("")
        out.extend(" " * base + "- " + item for item in items)
        out.append("")
    return out


def _on_process_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    lines[:] = _colon_blocks_as_lists(lines)


def _on_check_consistency(app: Sphinx, env: BuildEnvironment) -> None:
    documented = set(env.get_domain("py").objects)  # type: ignore[attr-defined]
    # An object exported under several names (`Direction`) needs documenting under one.
    names_of: dict[int, set[str]] = {}
    for module_name, name, obj in _public_names(app):
        names_of.setdefault(id(obj), set()).add(f"{module_name}.{name}")
    for module_name, name, obj in _public_names(app):
        if not names_of[id(obj)] & documented:
            logger.warning(
                "%s.%s is public (in __all__) but not in the API reference",
                module_name,
                name,
                type="asyncconnmgr",
                subtype="undocumented",
            )


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("if-importable", IfImportable)
    app.connect("builder-inited", _on_builder_inited)
    app.connect("missing-reference", _on_missing_reference)
    app.connect("env-check-consistency", _on_check_consistency)
    app.connect("autodoc-process-docstring", _on_process_docstring)
    app.add_post_transform(PreferPackageRoot)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
