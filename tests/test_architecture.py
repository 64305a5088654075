"""The package's floors: every module imports only from its own floor or the floors below, and
no module reaches into another package's private modules or names.

The floors, ground up: _validation (and _resources); ops; concepts, models, solvers; kernels;
ntk; learners; experiments; cli. Imports inside functions count as much as those at the top of
a module: a function-level import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fastkernels

FLOORS = {
    "_validation": 0,
    "_resources": 0,
    "_C": 0,
    "ops": 1,
    "concepts": 2,
    "models": 2,
    "solvers": 2,
    "kernels": 3,
    "ntk": 4,
    "learners": 5,
    "experiments": 6,
    "cli": 7,
    "__main__": 8,
    "__version__": 0,  # metadata of the package, needed by every floor that records versions
}
TOP = 8  # the package's own __init__ gathers the public names of every floor


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _floor(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) == 1:
        return "", TOP
    return parts[1], FLOORS.get(parts[1], TOP)


def _targets(node, module: str, is_package: bool, package: str) -> list[str]:
    """Absolute names of what an import statement imports from the package."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == package]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    elif node.module and node.module.split(".")[0] == package:
        prefix = node.module
    else:
        return []
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def _private(parts: list[str]) -> bool:
    return any(p.startswith("_") and not p.startswith("__") for p in parts)


def import_violations(root: Path) -> list[str]:
    """Upward imports and cross-package private imports of the package at ``root``."""
    package = root.name
    out = []
    for path in sorted(root.rglob("*.py")):
        module, is_package = _module_name(path, root)
        source_top, source_floor = _floor(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _targets(node, module, is_package, package):
                top, floor = _floor(target)
                if top == source_top or not top:
                    continue
                where = f"{module}:{node.lineno} imports {target}"
                if floor > source_floor:
                    out.append(f"{where} (floor {top} is above {source_top or package})")
                # The floor's own name may be private (_validation); what lies inside may not.
                elif _private(target.split(".")[2:]):
                    out.append(f"{where} (private to {top})")
                else:
                    continue
                break  # one finding per import statement
    return out


def test_no_upward_or_private_imports():
    root = Path(fastkernels.__file__).parent
    assert import_violations(root) == []


def test_the_walk_finds_violations(tmp_path):
    # The check itself can fail: a floor that imports from above, at module or function level,
    # and a private name taken across packages.
    pkg = tmp_path / "fastkernels"
    for sub in ("ops", "kernels", "solvers"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "gram.py").write_text("from ..kernels import formulas\n")
    (pkg / "solvers" / "cg.py").write_text("def f():\n    from fastkernels.kernels.base import K\n")
    (pkg / "kernels" / "base.py").write_text("from ..ops._keops import check\nfrom .. import ops\n")
    found = import_violations(pkg)
    assert len(found) == 3, found
    assert "fastkernels.ops.gram:1 imports fastkernels.kernels" in found[1]
    assert "private to ops" in found[0] and "floor kernels is above solvers" in found[2]
