"""The layout holds: the one-way stack of app/core, no import cycle, no test code shipped, no Qt in the core.

Imports are read from the source (every `import` statement, those inside functions too, but not those under
`if TYPE_CHECKING:`, which never run), so a cycle dodged with a late import still counts as a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import app

APP = Path(app.__file__).parent
CORE = APP / "core"
QT = ("PySide6", "shiboken6", "qasync", "PyQt5", "PyQt6")
# app/core's parts, lowest first: a part may import only the parts before it (and the foundation).
STACK = ("catalog", "runtime", "routing", "observe", "top")
FOUNDATION = {"app.core.errors", "app.core.paths", "app.core.config", "app.core.storage"}
MAX_LINES = 400
LONG_MODULE_NOTE = "Long module:"


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in APP.rglob("*.py")}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path) -> set[str]:
    """Every module `path` imports when it runs (resolved to the modules and packages of app/ it names)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                # `from app.core import paths` imports the module app.core.paths
                found.update(f"{child.module}.{alias.name}" for alias in child.names
                             if f"{child.module}.{alias.name}" in MODULES)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


GRAPH = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def part_of(module: str) -> str | None:
    """The stack part of an app.core module, None for the foundation and the package itself."""
    if not module.startswith("app.core.") or any(module == f or module.startswith(f + ".") for f in FOUNDATION):
        return None
    second = module.split(".")[2]
    return second if second in STACK else "top"


def test_core_never_imports_the_server_or_the_window() -> None:
    bad = sorted((name, m) for name, deps in GRAPH.items() if name.startswith("app.core")
                 for m in imports(MODULES[name]) if m.split(".")[:2] in (["app", "server"], ["app", "ui"]))
    assert bad == []


def test_nothing_shipped_imports_the_tests() -> None:
    bad = sorted((name, m) for name, path in MODULES.items() for m in imports(path) if m.split(".")[0] == "tests")
    assert bad == []


def test_each_core_part_imports_only_the_parts_below_it() -> None:
    assert {"app.core.catalog.registry", "app.core.runtime.pool", "app.core.routing.router",
            "app.core.observe.decisions", "app.core.services"} <= MODULES.keys()
    bad = []
    for name, deps in GRAPH.items():
        mine = part_of(name)
        for dep in deps:
            theirs = part_of(dep)
            if mine and theirs and STACK.index(theirs) > STACK.index(mine):
                bad.append(f"{name} ({mine}) imports {dep} ({theirs})")
    assert sorted(bad) == []


def test_the_server_calls_the_core_through_services() -> None:
    reaching = {"app.core.engine", "app.core.catalog.registry", "app.core.runtime.pool", "app.core.storage.store"}
    bad = sorted((name, m) for name, deps in GRAPH.items()
                 if name.startswith(("app.server", "app.ui")) for m in deps & reaching)
    assert bad == []


def test_no_import_cycle() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                walk(dep)
        path.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            walk(module)
    # A package's __init__ importing its own modules is not a cycle of design: drop edges child -> own package.
    real = [c for c in cycles if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in zip(c, c[1:]))]
    assert real == []


def test_long_modules_say_why() -> None:
    unexplained = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if lines > MAX_LINES and LONG_MODULE_NOTE not in doc:
            unexplained.append(f"{name}: {lines} lines")
    assert unexplained == []


def test_core_modules_import_no_qt() -> None:
    """Imported for real in a fresh interpreter: a third-party import that pulls Qt in counts too."""
    modules = sorted(m for m in MODULES if m.startswith("app.core.") and not m.endswith("__main__"))
    assert "app.core.catalog.registry" in modules
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            f"print(sorted(n for n in sys.modules if n.split('.')[0] in {QT!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
