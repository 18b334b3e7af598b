"""Layers point one way: no import cycle among the modules of ``rankengine/``.

Every ``import`` and ``from ... import`` counts, at module level and inside functions alike (a
function-level import only defers a cycle, it does not remove it). Imports under
``if TYPE_CHECKING:`` are type-only and are not runtime edges.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from ..conftest import REPO

PACKAGE = "rankengine"

#: Import edges that still close a cycle, each with what removes it. The cycle test ignores
#: them; test_known_cycle_edges_still_exist fails once one is gone, so the list only shrinks.
def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every module of the package (packages by __init__)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:  # the else branch runs
                yield from _imports_in(child)
            continue
        yield from _imports_in(node)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports(node)


def edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports at run time."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def add(target: str) -> None:
        # ``import a.b.c`` also imports a and a.b; the nearest existing module is the edge
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target:
            out.add(target)

    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    add(alias.name)
            continue
        if node.level:
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        if not (module == PACKAGE or module.startswith(PACKAGE + ".")):
            continue
        for alias in node.names:
            full = f"{module}.{alias.name}"
            add(full if full in modules else module)
    return out


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: edges(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, and modules importing
    themselves (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
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
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete loop through a component's first module, for the failure message."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    return [start, start]


def test_no_import_cycles() -> None:
    graph = import_graph()
    problems = [" → ".join(a_cycle(graph, c)) + f"  (component: {', '.join(c)})"
                for c in cycles(graph)]
    assert not problems, "import cycles in rankengine/:\n" + "\n".join(problems)


def test_only_the_cli_imports_the_cli() -> None:
    """``cli/`` is the top layer: nothing below it may import it, even lazily."""
    graph = import_graph()
    cli = f"{PACKAGE}.cli"
    below = {name: sorted(t for t in targets if t == cli or t.startswith(cli + "."))
             for name, targets in graph.items() if not (name == cli or name.startswith(cli + "."))}
    assert {name: targets for name, targets in below.items() if targets} == {}


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": set()}
    assert cycles(graph) == [["a", "b", "c"], ["e"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_function_level_and_relative_imports_count(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from rankengine import top\n")
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from rankengine.other import X\n"
        "def g():\n    from .sub.b import f\n    import rankengine.other\n")
    (pkg / "other.py").write_text("from rankengine.sub import b\n")
    graph = import_graph(tmp_path)
    assert graph["rankengine.sub"] == {"rankengine.sub.b"}
    assert graph["rankengine.sub.b"] == {"rankengine.top"}
    assert graph["rankengine.top"] == {"rankengine.sub.b", "rankengine.other"}
    assert graph["rankengine.other"] == {"rankengine.sub.b"}
    assert cycles(graph) == [["rankengine.other", "rankengine.sub.b", "rankengine.top"]]
