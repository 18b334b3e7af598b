"""The wheel holds every package of the source tree (a missing one installs fine and fails
on first import, as rankengine.cli once did)."""

from __future__ import annotations

import tomllib

from ..conftest import REPO


def test_every_rankengine_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    packages = {".".join(init.parent.relative_to(REPO).parts)
                for init in (REPO / "rankengine").rglob("__init__.py")
                if "__pycache__" not in init.parts}
    assert packages - listed == set()
