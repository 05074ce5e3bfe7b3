"""The package's import graph runs downward: models <- data <- engine <- hub / cli / the root.

``semask.models`` never imports the engine, the hub or the package root; ``semask.engine``
imports ``semask.models``, never the root or the hub. Checked on the source (every import
statement, also those inside functions), so a lazy upward import cannot slip in.
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


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
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
    probe = PACKAGE / "models" / "io.py"
    names = imported_modules(probe)
    assert "semask.models.base" in names and "semask.models.pretrained" in names
    assert "semask.models.mit.convert" in names  # imported lazily inside a function
