"""``rankengine plugin new NAME``: write a minimal, working plugin package to start from.

The package has one module with one hook implementation (a fusion named like the plugin), a
``pyproject.toml`` publishing it in the ``rankengine`` entry-point group, and a test that the
installed plugin is found and its fusion works, using rankengine's pytest fixtures
(:mod:`rankengine.testing`). No cookiecutter: the templates are the strings below.
"""

from __future__ import annotations

import keyword
import re
import shutil
import tempfile
from pathlib import Path

import click

from rankengine.errors import RankEngineError
from rankengine.files import os_reason, umask
from rankengine.hookspecs import HOOK_API_VERSION

NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
RESERVED = {"builtin", "rankengine", "plugins", "testing"}


class ScaffoldError(RankEngineError):
    """The plugin cannot be generated (bad name, target exists)."""


PYPROJECT = """\
[build-system]
requires = ["setuptools>=77", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "A rankengine plugin: the {name} fusion."
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["rankengine>={rankengine_version},<1"]

[project.optional-dependencies]
test = ["pytest>=8"]

# The name users write in engine.toml: [engine] plugins = ["builtin", "{name}"]
[project.entry-points.rankengine]
{name} = "{package}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
filterwarnings = ["error"]
"""

README = """\
# {dist}

A rankengine plugin. It registers the fusion `{name}`: the score is
the largest weighted task probability, `max_k w_k * p_k`.

```bash
pip install -e '.[test]'
pytest
```

```toml
# engine.toml
[engine]
plugins = ["builtin", "{name}"]

[fusion]
kind = "{name}"
weights = {{ click = 1.0, order = 4.0 }}
```

`rankengine plugins` lists it with its version and origin `third-party`. The hooks, their
signatures and the compatibility rules are in rankengine's docs/plugins.md.
"""

MODULE = '''\
"""{name}: a rankengine plugin.

Hook implementations are module-level functions marked with ``@hookimpl``; rankengine imports
this module when engine.toml enables the plugin ``{name}``. Import only from ``rankengine``
(its public API).
"""

from __future__ import annotations

import torch
from pydantic import Field
from rankengine import Fusion, Params, Register, hookimpl

#: The rankengine hook API this plugin is written against; checked when the plugin loads.
RANKENGINE_HOOK_API = "{api}"


class {camel}Params(Params):
    """The keys next to ``kind = "{name}"`` under [fusion]; unknown keys are errors."""

    weights: dict[str, float] = Field(default_factory=dict)


class {camel}Fusion(Fusion):
    """``max_k w_k * p_k``: rank by the most likely (weighted) behaviour."""

    params: {camel}Params

    def __init__(self, tasks: list[str], params: {camel}Params) -> None:
        super().__init__(tasks, params)
        unknown = sorted(set(params.weights) - set(tasks))
        if unknown:
            raise ValueError(f"weights name unknown task(s) {{unknown}}; tasks: {{tasks}}")
        self.w = torch.tensor([params.weights.get(t, 1.0) for t in tasks])

    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        return (predictions * self.w.to(predictions.dtype)).max(dim=1).values


@hookimpl
def rankengine_register_fusions(register: Register) -> None:
    register("{name}", {camel}Fusion, params={camel}Params,
             help="the largest weighted task probability")
'''

TEST = '''\
"""The installed plugin is found through its entry point and its fusion works.

The ``rankengine_engine`` fixture comes from rankengine's pytest plugin (rankengine.testing).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from rankengine.pluginmanager import Engine, discover_plugins


def test_plugin_is_installed() -> None:
    info = discover_plugins()["{name}"]
    assert (info.distribution, info.module, info.origin) == (
        "{dist}", "{package}", "third-party")


def test_fusion_scores_by_the_largest_weighted_probability(
        rankengine_engine: Callable[..., Engine]) -> None:
    engine = rankengine_engine(enabled=["builtin", "{name}"])
    component = engine.components.fusions.get("{name}")
    assert component.plugin == "{name}"
    fusion = component.factory(["click", "order"],
                                component.parse_params({{"weights": {{"order": 4.0}}}}))
    scores = fusion(torch.tensor([[0.5, 0.1], [0.3, 0.2]]))
    assert scores.tolist() == pytest.approx([0.5, 0.8])


def test_unknown_task_in_weights_is_an_error(rankengine_engine: Callable[..., Engine]) -> None:
    component = rankengine_engine(enabled=["{name}"]).components.fusions.get("{name}")
    with pytest.raises(ValueError, match="unknown task"):
        component.factory(["click"], component.parse_params({{"weights": {{"buy": 1.0}}}}))
'''


def plugin_files(name: str) -> dict[str, str]:
    """Relative path → text of the package for plugin ``name``."""
    check_name(name)
    from rankengine.version import __version__

    package = f"rankengine_{name}"
    values = {
        "name": name,
        "dist": f"rankengine-{name.replace('_', '-')}",
        "package": package,
        "camel": "".join(part.capitalize() for part in name.split("_") if part),
        "api": HOOK_API_VERSION,
        "rankengine_version": __version__,
    }
    return {
        "pyproject.toml": PYPROJECT.format(**values),
        "README.md": README.format(**values),
        f"src/{package}/__init__.py": MODULE.format(**values),
        f"tests/test_{name}.py": TEST.format(**values),
    }


def check_name(name: str) -> None:
    if not NAME.match(name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"plugin name {name!r}: use lower-case letters, digits and '_', starting with a "
            f"letter (at most 40 characters), e.g. 'rank_blend'"
        )
    if name in RESERVED:
        raise ScaffoldError(f"plugin name {name!r} is reserved; choose another")


def write_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write the package for plugin ``name`` to ``directory/rankengine-<name>``; returns it."""
    files = plugin_files(name)
    from rankengine.pluginmanager import discover_plugins

    installed = discover_plugins().get(name)
    if installed is not None:
        raise ScaffoldError(
            f"a plugin named '{name}' is already installed ({installed.distribution} "
            f"{installed.version}); plugin names must be unique, choose another"
        )
    root = Path(directory) / f"rankengine-{name.replace('_', '-')}"
    if root.exists():
        raise ScaffoldError(f"{root} already exists; choose another --dir or remove it")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed in one step: never a half-written package.
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    except OSError as exc:  # --dir under a file, no permission
        raise ScaffoldError(f"{root.parent}: cannot create the package here: "
                            f"{os_reason(exc)}") from None
    try:
        staging.chmod(0o777 & ~umask())  # mkdtemp's 0700 is not what a new folder gets
        for relative, text in files.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        staging.rename(root)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ScaffoldError(f"{root}: cannot write the package: {os_reason(exc)}") \
            from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


@click.group("plugin")
def plugin() -> None:
    """Write your own plugins."""


@plugin.command("new")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, help="where to create the package")
def new(name: str, directory: Path) -> None:
    """Create a minimal plugin package NAME (a fusion, its entry point and a test)."""
    root = write_plugin(name, directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        click.echo(f"  {path}")
    click.echo(f"created {root}\nnext: pip install -e '{root}[test]' && pytest {root}")
