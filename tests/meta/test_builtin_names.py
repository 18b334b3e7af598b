"""The core names no built-in component: components describe themselves and the core asks them.

The built-in names are enumerated from the plugin manager (every component registered by a
plugin of the rankengine distribution), so a new built-in is covered without editing this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

import rankengine
from rankengine.pluginmanager import load_engine

CORE = Path(rankengine.__file__).parent

#: Literals that equal a built-in's name but mean something else, each reviewed: the core does
#: not choose a component by them. (module, literal) → why.
REVIEWED = {
    ("rankengine/__init__.py", "mlp"): "the public layer helper rankengine.mlp in __all__",
    ("rankengine/checkpoint.py", "torch"): "the key of torch's RNG state in a checkpoint",
    ("rankengine/report/plots.py", "none"): "matplotlib's svg.fonttype value (text as <text>)",
    ("rankengine/simulate.py", "dwell_time"): "the simulator's dwell-time column",
    ("rankengine/config.py", "bias"): "the bias tower's default feature group, not a calibrator",
    ("rankengine/plan.py", "calibration"): "the [calibration] config key its errors name",
}


def builtin_names() -> dict[str, str]:
    engine = load_engine()
    names: dict[str, str] = {}
    for table in engine.components.tables():
        for component in table:
            if engine.plugins[component.plugin].info.origin == "built-in":
                names[component.name] = f"{table.singular} '{component.name}'"
    return names


def string_literals(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module except docstrings (prose may mention a method)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_builtins_are_enumerated() -> None:
    names = builtin_names()
    assert len(names) >= 30  # every family contributes; an empty table would pass vacuously


def test_no_core_module_names_a_builtin_component() -> None:
    names = builtin_names()
    found = [f"{path.relative_to(CORE.parent)}:{line}: {value!r} ({names[value]})"
             for path in sorted(CORE.rglob("*.py"))
             for line, value in string_literals(path) if value in names
             and (str(path.relative_to(CORE.parent)), value) not in REVIEWED]
    assert not found, "the core names built-in components:\n" + "\n".join(found)
