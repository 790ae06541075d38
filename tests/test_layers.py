"""The house: imports only point down the layers, and no modules import each other.

storage < model < operations < pipelines < {flows, cli} (DESIGN.md §0). Every import counts,
also the ones deferred into functions, since a deferred import still ties the layers together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"storage": 0, "model": 1, "operations": 2, "pipelines": 3, "flows": 4, "cli": 4}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in LAYERS
            for path in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from pkg import mod`` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name if name in modules else node.module for name in names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in LAYERS)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def test_imports_only_point_down(graph):
    upward = []
    for module, imported in graph.items():
        layer = module.split(".")[0]
        for target in imported:
            other = target.split(".")[0]
            if other != layer and LAYERS[other] >= LAYERS[layer]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_cycles(graph):
    """Depth-first search over the module graph; a back edge is a cycle."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target == module or target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_graph_is_read_right(graph):
    """The checks above would pass on an empty graph: pin a few known edges."""
    assert "storage" in graph["pipelines.planner"]
    assert "pipelines.planner" in graph["cli.matting"]
    assert "model.outputs" in graph["pipelines.planner"]
