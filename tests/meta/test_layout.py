"""Invariants of the code base: built-ins use only the public API; every hook is tested."""

from __future__ import annotations

import ast
import inspect

import rankengine
from rankengine import hookspecs

from ..conftest import REPO


def test_builtin_plugins_import_only_the_public_api() -> None:
    offenders = []
    for path in sorted((REPO / "plugins").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("rankengine"):
                if node.module != "rankengine":
                    offenders.append(f"{path.name}: from {node.module} import ...")
                    continue
                for alias in node.names:
                    if alias.name not in rankengine.__all__:
                        offenders.append(f"{path.name}: {alias.name} is not in rankengine.__all__")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names
                              if a.name.startswith("rankengine")]
    assert offenders == []


def hook_names() -> list[str]:
    return [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
            if name.startswith("rankengine_")]


def test_every_hook_is_exercised_by_a_test() -> None:
    sources = "".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py")
                      if p.name != "test_layout.py")
    untested = [name for name in hook_names() if name not in sources]
    assert untested == []


def test_hookspecs_are_typed_and_documented() -> None:
    for name in hook_names():
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and fn.__doc__.strip(), name
        signature = inspect.signature(fn)
        assert all(p.annotation is not inspect.Parameter.empty
                   for p in signature.parameters.values()), name
        body = ast.parse(inspect.getsource(fn)).body[0]
        assert isinstance(body, ast.FunctionDef) and len(body.body) == 1, \
            f"{name}: spec bodies are docstrings only"


def test_core_never_imports_builtin_plugins() -> None:
    for path in (REPO / "rankengine").rglob("*.py"):
        assert "rankengine_plugins" not in path.read_text(), path

