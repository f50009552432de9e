"""The house rules, checked from the code itself: no import circle inside moyu_core, methods/ is
pure (it imports nothing that runs the model, reads the store or trains), SQL only in store.py
(and, for the neuron atlas' Parquet shards, atlas/query.py), no torch in the store or the numbers
the explorer draws, no Streamlit in the core, no sys.path edits anywhere."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "moyu_core"


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module of the package `path` imports, at any depth (function-level imports too)."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}  # `from . import x` imports a module
    return out


def graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in CORE.rglob("*.py")}
    g = {}
    for mod, path in files.items():
        deps = set()
        for name in _imports(path):
            while name and name not in files:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != mod:
                deps.add(name)
        g[mod] = deps
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def _package_parents(mod: str) -> set[str]:
    parts = mod.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_circle():
    g = graph()
    # a package's __init__ importing its own submodules is not a circle of the design
    for mod in g:
        g[mod] = {d for d in g[mod] if d not in _package_parents(mod)}
    assert _cycles(g) == []


def test_the_checker_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_methods_are_pure():
    # kernels: compiled functions of tensors (the row-wise top-k), no model and no store
    allowed = {"moyu_core", "moyu_core.errors", "moyu_core.keep", "moyu_core.kernels"}
    for mod, deps in graph().items():
        if mod.startswith("moyu_core.methods"):
            bad = {d for d in deps if not d.startswith("moyu_core.methods") and d not in allowed}
            assert not bad, f"{mod} imports {sorted(bad)}"


def test_layers_of_the_core():
    g = graph()
    for mod in ("moyu_core.store", "moyu_core.blobs", "moyu_core.analysis"):
        src = (CORE / (mod.split(".", 1)[1].replace(".", "/") + ".py")).read_text()
        assert not re.search(r"^\s*(import torch|from torch)", src, re.M), f"{mod} imports torch"
    for mod, deps in g.items():
        assert "moyu_core.store" not in deps or not mod.startswith("moyu_core.methods"), mod
    for path in CORE.rglob("*.py"):
        src = path.read_text()
        assert not re.search(r"^\s*(import|from) streamlit", src, re.M), f"{path} imports streamlit"
        if path.name != "store.py" and path != CORE / "atlas" / "query.py":   # the atlas' only SQL
            assert not re.search(r"\.execute\(|con\.sql\(|duckdb\.connect", src), f"SQL in {path}"


def test_no_sys_path_edits():
    for folder in ("moyu_core", "app", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue
            assert "sys.path" not in path.read_text(), f"{path} edits sys.path"
