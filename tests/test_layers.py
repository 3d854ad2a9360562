"""The shape of the code: imports run one way (no cycles, counting `TYPE_CHECKING` imports), nothing
imports `app`, and modules and functions stay small (issue #10)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from testkit.processes import ROOT

# The application's code: top-level modules and packages, not the tests, the benchmark or the testkit.
NOT_APPLICATION = {"tests", "bench", "testkit", ".venv", "static"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Functions allowed past the limit, and why.
LONG_FUNCTIONS: dict[str, str] = {}


def application_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] not in NOT_APPLICATION and not relative.parts[0].startswith("."):
            yield path


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every project module this file imports, at run time or for type checking alone."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in application_files()}
    modules = set(files)
    return {name: imports_of(path, modules) - {name} for name, path in files.items()}


def test_no_module_imports_in_a_cycle() -> None:
    graph = import_graph()
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        for target in sorted(graph[module]):
            if target in trail:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in finished:
                visit(target, [*trail, target])
        finished.add(module)

    finished: set[str] = set()
    for module in sorted(graph):
        if module not in finished:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_nothing_imports_the_app() -> None:
    importers = sorted(name for name, targets in import_graph().items() if "app" in targets)
    assert importers == []


def test_modules_stay_small() -> None:
    long = {
        module_name(path): lines
        for path in application_files()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_functions_stay_small() -> None:
    long: dict[str, int] = {}
    for path in application_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                name = f"{module_name(path)}.{node.name}"
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long[name] = length
    assert long == {}


def test_no_file_keeps_a_merge_conflicts_markers() -> None:
    """A merge resolved in a hurry once left `<<<<<<<` ... `>>>>>>>` in the README's settings table."""
    kinds = {".py", ".md", ".toml", ".txt", ".yml", ".yaml", ".js", ".html", ".css", ".example", ".ini"}
    skipped = {".venv", "node_modules", "vendor", ".git"}
    marked = [
        str(path.relative_to(ROOT))
        for path in sorted(ROOT.rglob("*"))
        if path.is_file()
        and (path.suffix in kinds or path.name in {"Makefile", "Dockerfile"})
        and not skipped & set(path.relative_to(ROOT).parts)
        and any(
            line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "======="
            for line in path.read_text(errors="replace").splitlines()
        )
    ]
    assert marked == []
