"""No import cycles among the modules of ``protocol``, ``trust`` and ``relay_runtime``.

The graph is read from the source text, so every import counts: module level, inside a
function (a deferred import still ties the two modules together) and under
``TYPE_CHECKING``. An edge goes to the module an import names: ``from pkg import mod`` is
an edge to ``pkg.mod`` when that is a module, else to ``pkg``. A package's ``__init__``
being run on the way to a submodule is not an edge (every submodule would otherwise be in a
cycle with a package face that re-exports it).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "trust", "relay_runtime")


@functools.cache
def module_files() -> dict[str, Path]:
    """Every module of the three packages by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported_names(path: Path, module: str) -> Iterator[str]:
    """What ``path`` imports: ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a.b``
    when that is a module, else ``a``. Relative imports are resolved against ``module``."""
    files = module_files()
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                name = f"{prefix}.{alias.name}"
                yield name if name in files else prefix


def import_graph() -> dict[str, set[str]]:
    """Module → the modules of the three packages it imports."""
    files = module_files()
    return {
        module: {name for name in imported_names(path, module) if name in files} - {module}
        for module, path in files.items()
    }


def cycles(graph: Mapping[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def in_package(component: frozenset[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in component)


def test_the_graph_sees_imports_of_every_kind(tmp_path: Path) -> None:
    """Deferred and TYPE_CHECKING imports are edges, relative imports are resolved."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import core\n"
        "if TYPE_CHECKING:\n"
        "    from trust._model import Level\n"
        "def f():\n"
        "    import protocol._frames\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(source, encoding="utf-8")
    names = set(imported_names(path, "trust._store.mod"))
    assert {"trust._store.core", "trust._model", "protocol._frames"} <= names
    assert "trust._model.Level" not in names
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    graph = import_graph()  # the real tree is read: known edges are there
    assert {"trust._rules", "protocol._events"} <= graph["trust._engine"]
    assert "relay_runtime.config._values" in graph["relay_runtime._statedir"]


@pytest.mark.parametrize("package", ["protocol", "trust", "relay_runtime"])
def test_no_cycles_inside(package: str) -> None:
    found = [sorted(c) for c in cycles(import_graph()) if in_package(c, package)]
    assert found == []
