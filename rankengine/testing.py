"""Fixtures and helpers for testing rankengine plugins; a pytest plugin.

Installed with rankengine as the ``pytest11`` entry point ``rankengine``, so in any project that
has rankengine installed these fixtures are available without a ``conftest.py``:

``rankengine_dataset`` (session)
    a directory with a small simulated impression log: ``train.parquet``, ``valid.parquet``,
    ``test.parquet`` (funnel click → favorite / order → pay, plus ``dwell_time``).
``rankengine_config``
    ``rankengine_config(plugins=[...], fusion=..., model=..., extra=...)`` writes a tiny,
    fast engine.toml around ``rankengine_dataset`` into ``tmp_path`` and returns its path.
``rankengine_engine``
    ``rankengine_engine(plugin, ..., enabled=["builtin"])`` builds a fresh plugin manager
    with the enabled entry-point plugins plus in-process plugin objects (modules or instances).
``rankengine_registry``
    a :class:`rankengine.registry.RegistryStore` on a temporary SQLite file, closed afterwards.

Nothing heavy is imported until a fixture is used, so the plugin costs nothing in test runs
that do not use it. The helpers (:func:`tiny_config_text`, :func:`make_engine`,
:func:`train_tiny`, :func:`make_dataset`) work outside pytest as well.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from rankengine.bundle import ModelBundle
    from rankengine.pluginmanager import Engine
    from rankengine.registry import RegistryStore

__all__ = [
    "TINY_FEATURES",
    "TINY_TASKS",
    "make_dataset",
    "make_engine",
    "rankengine_config",
    "rankengine_dataset",
    "rankengine_engine",
    "rankengine_registry",
    "tiny_config_text",
    "train_tiny",
]

#: The task graph of the tiny config: every cascade feature (conditional nodes, an ESM² ``via``
#: branch, a regression node) on the simulated funnel.
TINY_TASKS = """
[tasks]
click = { label = "click" }
favorite = { label = "favorite", after = "click" }
order = { label = "order", after = "click", via = "favorite" }
pay = { label = "pay", after = "order" }
[tasks.dwell]
label = "dwell_time"
type = "regression"
after = "click"
loss = "log_mse"
weight = 0.1
"""

#: Context and item features of the simulated log, with small embeddings.
TINY_FEATURES = """
[[features]]
name = "user_segment"
kind = "categorical"
side = "context"
dim = 4

[[features]]
name = "device"
kind = "categorical"
side = "context"
dim = 4

[[features]]
name = "user_hist_categories"
kind = "sequence"
max_len = 5
dim = 4
side = "context"

[[features]]
name = "item_category"
kind = "categorical"
dim = 4

[[features]]
name = "item_brand"
kind = "categorical"
dim = 4

[[features]]
name = "item_price"
kind = "numeric"
transform = "log1p_standardize"

[[features]]
name = "position"
kind = "categorical"
dim = 4
"""

DEFAULT_MODEL = """
[model]
backbone = { kind = "mmoe", experts = 2, expert_hidden = [16] }
tower = { kind = "mlp", hidden = [8] }
cascade = "esm2"
"""

DEFAULT_FUSION = 'kind = "weighted_product"\nweights = { click = 1.0, order = 1.0 }'


def make_dataset(out_dir: str | Path, *, requests: int = 1500, users: int = 300,
                 items: int = 200, seed: int = 5) -> Path:
    """Write a small simulated funnel (train / valid / test parquet) into ``out_dir``."""
    from rankengine.simulate import SimulationConfig, write_funnel

    out = Path(out_dir)
    write_funnel(out, SimulationConfig(requests=requests, users=users, items=items, seed=seed))
    return out


def tiny_config_text(data_dir: str | Path, *, plugins: Sequence[str] = ("builtin",),
                     fusion: str = DEFAULT_FUSION, model: str = DEFAULT_MODEL,
                     tasks: str = TINY_TASKS, features: str = TINY_FEATURES, epochs: int = 1,
                     batch_size: int = 128, lr: float = 1e-2, extra: str = "") -> str:
    """An engine.toml that trains in a second or two on :func:`make_dataset`'s data.

    One epoch of a 3k-parameter MMoE + ESM² already ranks (validation AUC around 0.7).

    ``fusion`` is the body of the ``[fusion]`` table, ``model`` the whole ``[model]`` table,
    ``tasks`` and ``features`` the ``[tasks]`` and ``[[features]]`` tables, ``extra`` any
    further tables (``[evaluate]``, ``[loss]``, ``[registry]`` ...).
    """
    data = Path(data_dir)
    enabled = ", ".join(f'"{p}"' for p in plugins)
    head = textwrap.dedent(f"""
        [engine]
        plugins = [{enabled}]
        seed = 11

        [data]
        train = "{(data / 'train.parquet').as_posix()}"
        valid = "{(data / 'valid.parquet').as_posix()}"
        test = "{(data / 'test.parquet').as_posix()}"
        group = "request_id"

        [train]
        epochs = {epochs}
        batch_size = {batch_size}
        lr = {lr}
        progress = false
        """)
    return f"{head}\n[fusion]\n{fusion}\n{extra}\n{model}\n{tasks}\n{features}"


def make_engine(*plugins: Any, enabled: Sequence[str] = ("builtin",),
                disabled: Sequence[str] = ()) -> Engine:
    """A fresh plugin manager: the ``enabled`` entry-point plugins plus in-process ``plugins``.

    Each of ``plugins`` is a module or an instance with ``@hookimpl`` methods, or a
    ``(name, plugin)`` pair; without a name the module's ``__name__`` (or the class name) is used.
    """
    from rankengine.pluginmanager import load_engine

    extra: list[tuple[str, Any]] = []
    for item in plugins:
        if isinstance(item, tuple):
            name, obj = item
        else:
            obj = item
            name = getattr(obj, "__name__", None) or type(obj).__name__
        extra.append((str(name), obj))
    return load_engine(enabled, disabled, extra=extra)


def train_tiny(config_path: str | Path, engine: Engine | None = None) -> ModelBundle:
    """Train the model ``config_path`` describes (no progress bar) and return it."""
    from rankengine.config import load_config
    from rankengine.train import train

    return train(load_config(config_path), engine=engine, progress=False)


@pytest.fixture(scope="session")
def rankengine_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated impression log, written once per test session."""
    return make_dataset(tmp_path_factory.mktemp("rankengine_dataset"))


@pytest.fixture
def rankengine_config(tmp_path: Path, rankengine_dataset: Path) -> Callable[..., Path]:
    """``rankengine_config(**options) -> Path``: a tiny engine.toml in ``tmp_path``.

    Options are those of :func:`tiny_config_text` (``plugins``, ``fusion``, ``model``,
    ``tasks``, ``epochs``, ``extra``) plus ``name`` (the file name, default ``engine.toml``).
    """

    def write(*, name: str = "engine.toml", **options: Any) -> Path:
        path = tmp_path / name
        path.write_text(tiny_config_text(rankengine_dataset, **options))
        return path

    return write


@pytest.fixture
def rankengine_engine() -> Callable[..., Engine]:
    """``rankengine_engine(*plugins, enabled=["builtin"], disabled=[])``: a fresh engine.

    See :func:`make_engine`.
    """
    return make_engine


@pytest.fixture
def rankengine_registry(tmp_path: Path) -> Iterator[RegistryStore]:
    """A model registry on a fresh SQLite file in ``tmp_path`` (schema at the latest revision)."""
    from rankengine.registry import RegistryStore

    store = RegistryStore(f"sqlite:///{(tmp_path / 'registry.db').as_posix()}")
    try:
        yield store
    finally:
        store.close()
