"""The package's shape (issue 17): every import points down the layers of docs/design.md, "Layers",
and no modules import each other in a cycle. Read from the source with ``ast``, imports inside
functions included (a function-level import is still a dependency)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autotransfer"

#: Bottom first. A module may import its own layer and the layers below it.
LAYERS = [
    ["core"],
    ["data"],
    ["backbones"],
    ["train"],
    ["prior"],
    ["estimate"],
    ["search"],
    ["surface"],
    ["forecast"],
    ["handback"],
    ["report"],
    ["pipeline"],
    ["cli"],
    ["__init__"],
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (``from a.b import c`` counts ``a.b.c`` when that is a module)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        out.update(t for t in targets if t in known and t != name)
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    key = "__init__" if len(parts) == 1 else parts[1]
    if key not in LAYER_OF:
        pytest.fail(f"{module} is in no layer: add its package to LAYERS and to docs/design.md")
    return LAYER_OF[key]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_import_points_down_the_layers():
    upward = [
        f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)})"
        for src, targets in sorted(_graph().items())
        for dst in sorted(targets)
        if _layer(dst) > _layer(src)
    ]
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_modules_import_each_other_in_a_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    # a package's __init__ that re-exports its own modules is not a cycle with them
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_edge(tmp_path, monkeypatch):
    """The check can fail: a core module that imports the search layer is reported."""
    fake = tmp_path / "autotransfer"
    (fake / "core").mkdir(parents=True)
    (fake / "search").mkdir()
    for f in ("__init__.py", "core/__init__.py", "search/__init__.py", "search/study.py"):
        (fake / f).write_text("")
    (fake / "core" / "bad.py").write_text("def f():\n    from autotransfer.search.study import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    graph = _graph()
    assert graph["autotransfer.core.bad"] == {"autotransfer.search.study"}
    assert _layer("autotransfer.search.study") > _layer("autotransfer.core.bad")
