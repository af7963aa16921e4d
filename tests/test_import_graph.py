"""The import graph inside ``model/`` and ``service/`` has no cycle.

Every ``import`` statement counts, wherever it sits: at module level, under ``TYPE_CHECKING`` or inside a
function (an import moved into a function to dodge a cycle is still a cycle, only deferred to run time).
Run as a script for the figures: ``python -m tests.test_import_graph``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "service")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("kind_serve", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that one import statement in ``module`` loads (a package: its ``__init__``)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
            base = ".".join([*anchor, *([base] if base else [])])
        # ``from pkg import name``: ``name`` is a submodule when one by that name exists
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = set()
    for target in targets:
        # ``import a.b.c`` loads the deepest known module named (its parents are packages)
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)
    return found


def import_graph(package: str) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports, from every import statement in its source."""
    files = sorted((ROOT / package).rglob("*.py"))
    known = {module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= imported(node, module, path.name == "__init__.py", known)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan): each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def simple_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each listed once from its smallest module name (small graphs only)."""
    cycles = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                cycles.append([*path])
            elif nxt > start and nxt not in path:
                walk(start, nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return cycles


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_are_acyclic(package: str) -> None:
    graph = import_graph(package)
    assert len(graph) > 5, f"found only {sorted(graph)} in {package}/"
    cycles = [" → ".join([*cycle, cycle[0]]) for cycle in simple_cycles(graph)]
    assert not cycles, f"{len(cycles)} import cycles in {package}/:\n" + "\n".join(cycles)


def test_the_walker_sees_type_checking_and_function_level_imports(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\ndef f():\n    from . import c\n"
    )
    tree = ast.parse(source)
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    edges = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            edges |= imported(node, "pkg.a", False, known)
    assert edges == {"pkg.b", "pkg.c"}
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":
    for name in PACKAGES:
        graph = import_graph(name)
        components = strongly_connected(graph)
        cycles = simple_cycles(graph)
        edges = sum(len(v) for v in graph.values())
        print(
            f"{name}/: {len(graph)} modules, {edges} edges, {len(components)} cyclic components, {len(cycles)} cycles"
        )
        for component in components:
            print("  component:", ", ".join(component))
        for cycle in cycles:
            print("  cycle:", " → ".join([*cycle, cycle[0]]))
