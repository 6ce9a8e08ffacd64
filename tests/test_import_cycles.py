"""No import cycles among gradhealth's modules: the flow goes one way (layers -> models -> train ->
monitor -> records; diagnose -> report; cli on top), and a cycle is where it starts to go back.

The graph is read from the source with ``ast``, importing nothing: an edge runs from a module to each
gradhealth module it imports, at module level or inside a function (an import deferred into a
function to dodge a cycle still ties the two modules together); only ``if TYPE_CHECKING:`` blocks are
left out, as they never run.
``from gradhealth.x import y`` points at ``gradhealth.x.y`` when that is a module, else at
``gradhealth.x``; relative imports are resolved the same way.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "gradhealth"

# Cycles known today, each to be removed with the change that breaks it (as a set of modules).
ALLOWED_CYCLES: list[frozenset[str]] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_files() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            found += [n for child in node.orelse for n in _imports(ast.Module(body=[child], type_ignores=[]))]
        else:
            found += _imports(node)
    return found


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The gradhealth modules ``name`` imports when it is imported."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
            continue
        if node.level:  # relative: from the package this module is in, up level - 1 more
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        for alias in node.names:
            submodule = f"{origin}.{alias.name}"
            targets.add(submodule if submodule in modules else origin)
    return {t for t in targets if t in modules and t != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit on long chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
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
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def a_cycle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete loop through the component, for the failure message: a -> b -> ... -> a."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    return paths[node] + [start]
                if child not in paths:
                    paths[child] = paths[node] + [child]
                    following.append(child)
        frontier = following
    return component


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    return [c for c in strongly_connected(graph) if len(c) > 1]


def test_tarjan_finds_the_cycles_of_a_known_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert a_cycle(["a", "b", "c"], graph) == ["a", "b", "c", "a"]


def test_imports_resolve_to_modules_and_packages(tmp_path):
    modules = set(module_files())
    rules = SRC / PACKAGE / "diagnose" / "rules.py"
    found = imports_of("gradhealth.diagnose.rules", rules, modules)
    assert {"gradhealth.monitor.records", "gradhealth.diagnose.findings"} <= found
    init = SRC / PACKAGE / "remedies" / "__init__.py"
    assert "gradhealth.remedies.clip" in imports_of("gradhealth.remedies", init, modules)
    relative = tmp_path / "relative.py"
    relative.write_text("from . import records\nfrom ..errors import ConfigError\n"
                        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gradhealth import cli\n"
                        "def later():\n    from gradhealth import checkup\n")
    assert imports_of("gradhealth.monitor.relative", relative, modules) == {
        "gradhealth.monitor.records", "gradhealth.errors", "gradhealth.checkup"}


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    found = [c for c in cycles(graph) if frozenset(c) not in ALLOWED_CYCLES]
    if found:
        pytest.fail("import cycles: " + "; ".join(" -> ".join(a_cycle(c, graph)) for c in found))


def test_every_allowed_cycle_still_exists():
    # an allow-list entry outlives its cycle only by mistake: remove it with the change that breaks it
    present = {frozenset(c) for c in cycles(import_graph())}
    assert [sorted(c) for c in ALLOWED_CYCLES if c not in present] == []


# the torch-free side: a log is diagnosed and reported on a machine without torch
TORCH_FREE = ("gradhealth.vocabulary", "gradhealth.monitor.records", "gradhealth.diagnose", "gradhealth.report")


def imports_torch(path: Path) -> bool:
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if any(n == "torch" or n.startswith("torch.") for n in names):
            return True
    return False


def test_the_torch_free_side_imports_no_torch():
    files, graph = module_files(), import_graph()
    reached = {m for m in files if m.startswith(TORCH_FREE)}
    frontier = list(reached)
    while frontier:
        for child in graph[frontier.pop()] - reached:
            reached.add(child)
            frontier.append(child)
    assert sorted(m for m in reached if imports_torch(files[m])) == []


def test_nothing_imports_the_command_line():
    graph = import_graph()
    users = {m for m, targets in graph.items() if not m.startswith("gradhealth.cli") and m != "gradhealth.__main__"
             and any(t == "gradhealth.cli" or t.startswith("gradhealth.cli.") for t in targets)}
    assert users == set()
