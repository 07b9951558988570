"""The package's structure as ARCHITECTURE.md describes it: no import cycle, and the serving side
free of torch and RecBole."""

import ast

from tests.conftest import PROJECT_ROOT


def package_imports(package="mind_recbole"):
    """``{module: {modules of the package it imports}}`` (``from mind_recbole import x`` imports ``mind_recbole.x``)."""
    root = PROJECT_ROOT / package
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    is_module = (PROJECT_ROOT / (candidate.replace(".", "/") + ".py")).is_file()
                    modules[name].add(candidate if is_module else node.module)
            elif isinstance(node, ast.Import):
                modules[name] |= {alias.name for alias in node.names if alias.name.split(".")[0] == package}
    return {name: {d for d in deps if d != name and d in modules} for name, deps in modules.items()}


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = package_imports()
    # the package's __init__ only forwards to quick_start lazily; a submodule importing a sibling
    # through ``from mind_recbole import x`` is not an import of __init__'s own code
    graph["mind_recbole"] = set()
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_serving_modules_import_neither_torch_nor_recbole():
    serving = sorted(p for p in (PROJECT_ROOT / "export").rglob("*.py") if p.name != "onnx_export.py")
    assert {"runtime.py", "retrieval.py", "app.py"} <= {p.name for p in serving}
    for path in serving:
        name = path.relative_to(PROJECT_ROOT)
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        # mind_recbole.atomic_write is standard library only (checked in test_the_package_has_no_import_cycle's graph)
        forbidden = {m for m in imported if m.split(".")[0] in ("torch", "recbole", "mind_recbole")} - {"mind_recbole.atomic_write"}
        assert not forbidden, (name, forbidden)
