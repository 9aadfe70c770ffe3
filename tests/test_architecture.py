"""The package's shape (docs/architecture.md): layers point one way, no import circle, short modules.

The import graph is read from the source with :mod:`ast` (every ``import``, module level or
inside a function), so a lazy import counts like any other: it runs the same code, later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "reid_prune"
MAX_LINES = 400

# Each module's layer, lowest first; a module may import its own layer and the layers below it.
# The first prefix that matches a module's dotted name (without "reid_prune.") decides.
LAYERS = [
    ("foundation", ("outputs", "precision", "distributed", "config_fields", "runtime", "hooks", "layers", "progress")),
    ("domain", ("backbone", "losses", "distillation", "data", "evaluation", "checkpoint")),
    ("interop", ("interop",)),
    ("pruners", ("pruners",)),
    ("analysis", ("analysis",)),
    ("config", ("config",)),
    ("engine", ("engine",)),
    ("jobs", ("jobs",)),
    ("bench", ("bench",)),
    ("commands", ("commands",)),
    ("entry", ("cli", "entry", "__main__", "")),  # "": the package's front door, reid_prune/__init__.py
]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The package's modules that ``path`` imports (names relative to the package, "" for its root)."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == root.name or node.module.startswith(root.name + ".")):
                target = node.module.removeprefix(root.name).lstrip(".")
            else:
                continue
            candidates = [target] + [f"{target}.{a.name}".lstrip(".") for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name.removeprefix(root.name).lstrip(".") for a in node.names
                          if a.name == root.name or a.name.startswith(root.name + ".")]
        else:
            continue
        found.update(c for c in candidates if c in modules and c != name)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    return {name: imports_of(path, set(paths), root) for name, path in paths.items()}


def layer_of(name: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or (p and name.startswith(p + ".")) for p in prefixes):
            return rank
    raise AssertionError(f"module reid_prune.{name} is in no layer of tests/test_architecture.py: add it to LAYERS "
                         "and to docs/architecture.md")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a or 'reid_prune'} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
                  for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def test_no_import_circle_in_the_package():
    assert cycles(import_graph()) == []


def test_every_import_points_down_or_sideways():
    assert upward(import_graph()) == []


def test_every_module_is_under_the_line_limit():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_only_commands_parse_arguments():
    parsers = sorted(name for name, path in ((module_name(p), p) for p in PACKAGE.rglob("*.py"))
                     if "argparse" in {a.name for n in ast.walk(ast.parse(path.read_text()))
                                       if isinstance(n, ast.Import) for a in n.names}
                     and layer_of(name) < layer_of("commands"))
    assert parsers == []


@pytest.fixture
def toy_package(tmp_path):
    """A package with a lazy import that closes a circle and an import that climbs a layer."""
    root = tmp_path / "reid_prune"
    (root / "pruners").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "pruners" / "__init__.py").write_text("from .base import Pruner\n")
    (root / "pruners" / "base.py").write_text("def f():\n    from ..config import Config\n")
    (root / "config.py").write_text("from reid_prune.pruners import Pruner\n")
    (root / "runtime.py").write_text("import reid_prune.engine.trainer\n")
    (root / "engine").mkdir()
    (root / "engine" / "__init__.py").write_text("")
    (root / "engine" / "trainer.py").write_text("")
    return root


def test_the_checks_find_a_lazy_circle_and_an_upward_import(toy_package):
    # The checks above must be able to fail: on a package built to break both rules, they do.
    graph = import_graph(toy_package)
    assert graph["pruners.base"] == {"config"} and graph["config"] == {"pruners"}
    assert cycles(graph) == [["config", "pruners", "pruners.base"]]
    assert upward(graph) == ["pruners.base (pruners) imports config (config)",
                             "runtime (foundation) imports engine.trainer (engine)"]
