"""The package's layers, read from its imports: engines at the bottom, no cycles, one module family knows the config.

Every ``import`` counts, at module level or inside a function: an import deferred into a function is still a
dependency, and hiding a cycle that way is what these tests refuse.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trtmix"

# package → the packages it must never import: what sits above it
ABOVE = {
    "ir": {"runtime", "calibration", "quant", "search", "sensitivity", "job", "api", "cli", "export", "parallel"},
    "runtime": {"calibration", "quant", "search", "sensitivity", "job", "api", "cli", "export", "parallel"},
    "calibration": {"quant", "search", "sensitivity", "job", "api", "cli", "export"},
    "quant": {"search", "sensitivity", "job", "api", "cli", "export"},
    "search": {"runtime", "sensitivity", "job", "api", "cli"},
    "sensitivity": {"job", "api", "cli"},
    "data": {"ir", "runtime", "calibration", "quant", "search", "sensitivity", "job", "api", "cli"},
}
# the modules that may know the whole job configuration: where it is defined, the wiring, the API and the CLI
CONFIG_READERS = {"trtmix.job.config", "trtmix.job.pipeline", "trtmix.job.run", "trtmix.api", "trtmix.cli.commands"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module → the trtmix modules it imports (``from trtmix.x import y`` counts ``trtmix.x.y`` when it is one).

    The root package is left out: it is the public facade (``__version__``, and the API re-exported lazily on
    first attribute access, PEP 562), not a layer.
    """
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    del modules["trtmix"]
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            edges[name] |= {target for target in targets if target in modules and target != name}
    return edges


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_no_package_imports_one_above_it(package: str) -> None:
    wrong = sorted(f"{module} imports {target}" for module, targets in _imports().items() if _package(module) == package
                   for target in targets if _package(target) in ABOVE[package])  # fmt: skip
    assert not wrong, "\n".join(wrong)


def test_no_module_import_cycle() -> None:
    """Tarjan's strongly connected components of the module graph: every one is a single module."""
    edges = _imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in edges.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while (top := stack.pop()) != module:
                component.append(top)
            component.append(module)
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_only_the_wiring_knows_the_whole_config() -> None:
    """Stages receive the objects and the few settings they use; ``CompileConfig`` stops at the wiring."""
    readers = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(alias.name == "CompileConfig" for alias in node.names):
                readers.add(_module_name(path))
    assert readers <= CONFIG_READERS, sorted(readers - CONFIG_READERS)


def test_the_checks_see_a_planted_violation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer rule fails on an engine module that imports a plan: it reads real imports, not a list."""
    planted = PACKAGE / "runtime" / "_planted_violation.py"
    planted.write_text("from trtmix.quant.plan import PrecisionPlan\n")
    try:
        with pytest.raises(AssertionError, match="_planted_violation imports trtmix.quant.plan"):
            test_no_package_imports_one_above_it("runtime")
    finally:
        planted.unlink()
