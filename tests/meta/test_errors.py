"""One error hierarchy: every exception class the core defines is a RankEngineError, so a
caller (the CLI, a server, a plugin) catches rankengine's deliberate errors with one clause."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import rankengine
from rankengine.errors import RankEngineError


def test_every_exception_class_of_the_core_is_a_rankengine_error() -> None:
    found, outside = [], []
    for module_info in pkgutil.walk_packages(rankengine.__path__, "rankengine."):
        if module_info.name.endswith(".__main__"):  # runs the command line when imported
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) \
                    and value.__module__ == module.__name__:
                found.append(f"{module.__name__}.{name}")
                if not issubclass(value, RankEngineError):
                    outside.append(f"{module.__name__}.{name}")
    assert len(found) >= 10  # the walk really saw the core's errors
    assert outside == []
