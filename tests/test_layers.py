"""The layering that docs/architecture.md describes: the sans-IO modules import no async
library at run time, the table imports no policy, and no part of the core imports the
manager."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "asyncconnmgr"
SANS_IO = ("_table", "_ledger", "_flight", "_policy", "_diversity", "_decay", "_config", "_models")
CORE = (*SANS_IO, "_closer", "_clock", "_events", "_errors", "abc")
ASYNC_LIBRARIES = {"anyio", "trio", "asyncio", "sniffio"}


def runtime_imports(module: str) -> set[str]:
    """The modules `module` imports when it runs (not those under `if TYPE_CHECKING:`), with
    the package's own given as their module name (`_table`, `abc`)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level and node.module:
                    found.add(node.module.split(".")[0])
                elif node.level:
                    found.update(alias.name for alias in node.names)
                elif node.module:
                    found.add(node.module.split(".")[0])
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    visit([item for item in inner if isinstance(item, ast.stmt)])
                    for handler in inner:
                        if isinstance(handler, ast.ExceptHandler):
                            visit(handler.body)

    visit(tree.body)
    return found


def test_the_reader_sees_the_imports_a_module_makes_at_run_time() -> None:
    # The helper itself: the manager imports anyio and its layers, the flight names the
    # closer only for its types.
    assert {"anyio", "_closer", "_ledger", "_table"} <= runtime_imports("_manager")
    assert "_closer" not in runtime_imports("_flight")
    assert "_models" in runtime_imports("_flight")


@pytest.mark.parametrize("module", SANS_IO)
def test_a_sans_io_module_imports_no_async_library(module: str) -> None:
    assert not runtime_imports(module) & ASYNC_LIBRARIES


def test_the_table_imports_no_policy() -> None:
    assert not runtime_imports("_table") & {"_policy", "_diversity"}


@pytest.mark.parametrize("module", CORE)
def test_no_part_of_the_core_imports_the_manager(module: str) -> None:
    assert "_manager" not in runtime_imports(module)
