"""The package's shape: no import circles among its modules, every command where the README says."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "harness"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every harness module ``path`` imports anywhere: at the top, inside functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # from package import module
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules around it, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 40
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_shared_helpers_import_no_stage():
    """core/ is beneath everything: it imports nothing of the stages above it."""
    graph = import_graph()
    for name, imports in graph.items():
        if name.startswith("harness.core"):
            assert all(i.startswith("harness.core") for i in imports), (name, imports)


# The stages from the bottom up: a module may import its own stage and those below it, never one above.
# config.py gathers the stages' sections; the runner puts one experiment to work; the commands
# (run, analyze, report, sweep, tune, lr_find, bench) sit on top.
LAYERS = [
    "harness.core",
    "harness.data",
    "harness.models",
    "harness.training",
    "harness.analysis",
    "harness.reporting",
    "harness.config",
    "harness.runner",
    "harness.search",
]


def layer(module: str) -> int:
    for index, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return index
    return len(LAYERS)  # a command


def test_no_stage_imports_a_stage_above_it():
    upward = [
        f"{name} -> {imported}"
        for name, imports in import_graph().items()
        for imported in imports
        if layer(imported) > layer(name)
    ]
    assert not upward, upward


def test_the_layer_check_sees_an_upward_import():
    assert layer("harness.training.wiring") < layer("harness.config") < layer("harness.tune")
    assert layer("harness.analysis.pipeline") < layer("harness.reporting.compare")


def test_validating_a_config_imports_no_heavy_library():
    """``import harness.config`` and validating a shipped file load no torch, torchvision, Ignite or matplotlib."""
    code = (
        "import sys, harness.config as c; c.load_config('experiments/resnet18_cpu.yaml', ['model.name=x.py:Net']);"
        "print(sorted(m for m in ('torch', 'torchvision', 'ignite', 'matplotlib') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]", shown.stdout + shown.stderr


def test_every_command_is_a_module_with_a_cli():
    for command in ("run", "analyze", "report", "sweep", "tune", "lr_find"):
        source = (PACKAGE / f"{command}.py").read_text()
        assert "def cli()" in source and 'if __name__ == "__main__":' in source, command
    assert "def cli()" in (PACKAGE / "bench" / "__main__.py").read_text()
