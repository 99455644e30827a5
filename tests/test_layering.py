"""Imports point one way, and no module imports itself back through others.

The layers, top to bottom (a layer may import the ones its row names, never one above it):

| layer | folder | may import |
|---|---|---|
| server | ``server/`` (the CLI, the HTTP app) | engine, weights, models, client, benchmarks |
| benchmarks | ``benchmarks/`` | engine, weights, models |
| engine | ``engine/`` but ``engine/models`` | weights, models |
| weights | ``weights/`` | models |
| models | ``engine/models`` (pure ``nn.Module``s) | nothing of the project |
| client | ``client/`` (the browser page, the python client) | nothing of the project: the wire protocol only |

Every import statement counts, the ones inside functions too: a cycle hidden behind a function-level import
is still a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"engine": "unseen.engine", "server": "unseen.server", "client": "unseen.client",
           "weights": "unseen.weights", "benchmarks": "unseen.benchmarks"}
MAY_IMPORT = {
    "server": {"engine", "weights", "models", "client", "benchmarks"},
    "benchmarks": {"engine", "weights", "models"},
    "engine": {"weights", "models"},
    "weights": {"models"},
    "models": set(),
    "client": set(),
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def layer(module: str) -> str:
    if module == "unseen.engine.models" or module.startswith("unseen.engine.models."):
        return "models"
    return module.split(".")[1]


def _targets(module: str, path: Path) -> set[str]:
    """The project modules ``module`` imports, anywhere in its file (submodules resolved)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import unseen.engine.x.y` -> the module that exists
                name = name.rpartition(".")[0]
            if name.startswith("unseen.") and name != module:
                found.add(name)
    return found


GRAPH = {m: _targets(m, p) for m, p in MODULES.items()}


def test_the_graph_sees_the_project():
    assert len(MODULES) > 40 and "unseen.engine.pipeline" in GRAPH["unseen.server.live"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_one_way(module):
    here = layer(module)
    wrong = sorted(t for t in GRAPH[module] if layer(t) != here and layer(t) not in MAY_IMPORT[here])
    assert not wrong, f"{module} ({here}) imports {wrong}: a {here} module may import only {MAY_IMPORT[here]}"


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    counter = 0
    for root in GRAPH:
        if root in index:
            continue
        work = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles():
    assert _cycles() == []
