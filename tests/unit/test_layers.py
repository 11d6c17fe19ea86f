"""The package tree is the architecture: dependencies point one way, and no module imports
itself back through others (checked on the source, module-level imports only — an import
inside a function is how an optional extra is loaded, and `TYPE_CHECKING` blocks are for
annotations)."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "shipyard"

# Lowest first. A module may import its own layer and the layers below it, never above.
LAYERS: list[set[str]] = [
    {"_version", "errors", "types"},
    {"config"},
    {"store", "state", "observe", "work"},
    {"pipeline"},
    {"providers", "privacy", "security", "resilience", "guards", "escalation", "monitor",
     "data", "sdk", "sim", "webhooks", "lifecycle", "engines", "jobs"},
    {"targets"},
    {"connectors"},
    {"gateway", "ui"},
    {"readiness"},
    {"cli", "__main__", "__init__"},
]


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: package '{top}' is in no layer; add it to LAYERS")


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(SRC.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(("shipyard", *parts)), path


def _imports(module: str, path: Path) -> set[str]:
    """Shipyard modules imported at module level (not in functions, not for type checking)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("shipyard"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level
                                                      + 1] + ([base] if base else []))
                if base.startswith("shipyard"):
                    # `from package import submodule` depends on the submodule, not on the
                    # package's own __init__ (which may be the importer's parent).
                    names = [f"{base}.{a.name}" for a in node.names]
                    submodules = [n for n in names if n in _MODULES]
                    found.update(submodules)
                    if len(submodules) < len(names):
                        found.add(base)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(list(ast.iter_child_nodes(node)))  # type: ignore[arg-type]
    visit(tree.body)
    return found


_MODULES = dict(_modules())


@functools.cache
def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(name, path) if m in _MODULES and m != name}
            for name, path in _MODULES.items()}


def test_dependencies_point_one_way() -> None:
    wrong = sorted(f"{module} imports {target}"
                   for module, targets in _graph().items() for target in targets
                   if _layer(target) > _layer(module))
    assert wrong == []


def test_nothing_below_the_gateway_imports_it() -> None:
    below = [m for m in _graph() if _layer(m) < _layer("shipyard.gateway")]
    offenders = sorted(m for m in below
                       if any(t.startswith(("shipyard.gateway", "shipyard.ui"))
                              for t in _graph()[m]))
    assert offenders == []


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    assert cycles == []
