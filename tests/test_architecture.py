"""The layout holds its architecture (docs/architecture.md): layers import downward only, no
module imports another's private names, and the module graph has no circle.

Function-local imports count too: a circle dodged by importing inside a function is still a
circle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lower rank = lower layer. A module may import its own package or a package of lower rank.
LAYERS = {
    "core": 0,
    "redis": 1,
    "catalog": 2,
    "ingest": 2,
    "obs": 2,
    "features": 3,
    "recs": 3,
    "engine": 4,
    "api": 5,
    "loaders": 6,
    "cli": 7,
}


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("app", "loaders"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "loaders":
        return "loaders"
    return parts[1] if len(parts) > 1 else "app"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return [(m, names) for m, names in found if m.split(".")[0] in ("app", "loaders")]


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target, names in _imports(path):
            # `from app.api import deps` imports the module app.api.deps.
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            graph[name].update(subs or ([target] if target in modules else []))
    return graph


def test_layers_import_downward_only() -> None:
    modules = _modules()
    upward = []
    for name, targets in _graph(modules).items():
        src = _package(name)
        for target in targets:
            dst = _package(target)
            if dst != src and dst in LAYERS and LAYERS[dst] >= LAYERS[src]:
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that run up or sideways across layers:\n" + "\n".join(upward)


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in _modules()} - {"app"}
    assert packages <= set(LAYERS), f"give these a layer in LAYERS: {packages - set(LAYERS)}"


def test_no_private_names_across_modules() -> None:
    used = [
        f"{path.relative_to(ROOT)}: {target}.{n}"
        for path in _modules().values()
        for target, names in _imports(path)
        for n in names
        if n.startswith("_")
    ]
    assert not used, "private names used from another module:\n" + "\n".join(used)


def test_no_import_circles() -> None:
    graph = _graph(_modules())
    circles = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_graph_is_read() -> None:
    """The graph really is read: the API depends on the engine assembly, not the reverse."""
    graph = _graph(_modules())
    assert "app.engine" in graph["app.api.app"]
    assert not any(t.startswith("app.api") for t in graph["app.engine"])
