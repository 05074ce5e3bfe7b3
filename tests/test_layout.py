"""The package's import graph runs downward: models <- data <- engine <- hub / cli / the root.

``semask.models`` never imports the engine, the hub or the package root; ``semask.engine``
imports ``semask.models``, never the root or the hub. Inside ``semask.models`` no two modules
import each other, directly or around a circle. Checked on the source (every import statement,
also those inside functions), so a lazy upward import cannot slip in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "semask"
FORBIDDEN = {  # sub-package -> modules it must not import
    "models": ("semask.engine", "semask.hub", "semask.cli", "semask.explain", "semask.serve", "semask.data"),
    "data": ("semask.engine", "semask.hub", "semask.cli", "semask.explain", "semask.serve"),
    "engine": ("semask.hub", "semask.cli", "semask.explain", "semask.serve"),
}


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against
    ``package``, by default the package the file lies in)."""
    if package is None:
        package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                names |= {f"{module}.{a.name}" for a in node.names} if node.module is None else {module}
            else:
                names.add(node.module or "")
    return names


@pytest.mark.parametrize("sub", sorted(FORBIDDEN))
def test_imports_only_run_downward(sub: str) -> None:
    offenders = []
    for path in sorted((PACKAGE / sub).rglob("*.py")):
        for name in imported_modules(path):
            if name == "semask" or name.startswith(FORBIDDEN[sub]):
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from .base import X\nfrom . import mit\n\ndef f():\n    from ..engine import trainer\n")
    names = imported_modules(probe, "semask.models")
    assert names == {"semask.models.base", "semask.models.mit", "semask.engine"}


def module_graph(sub: str) -> dict[str, set[str]]:
    """Module -> the modules of the same sub-package it imports (a package is its ``__init__``)."""
    files = {}
    for path in sorted((PACKAGE / sub).rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        targets = set()
        for imported in imported_modules(path):
            while imported and imported not in files:  # "a.b.C" (a name in module a.b) -> "a.b"
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle of imports (each strongly connected group of two or more modules), Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_models_package_has_no_import_cycle() -> None:
    cycles = import_cycles(module_graph("models"))
    assert not cycles, "modules of semask.models import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
