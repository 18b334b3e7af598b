"""Shared fixtures: a small simulated funnel on disk and a tiny engine.toml around it.

Built with rankengine.testing (what plugin authors use), with a larger funnel, id features and
oracle columns, so the suite also checks the oracle metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankengine import testing
from rankengine.pluginmanager import Engine

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def funnel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return testing.make_dataset(tmp_path_factory.mktemp("funnel"), requests=3000, users=500,
                                items=300, seed=3)


@pytest.fixture(scope="session")
def engine() -> Engine:
    return testing.make_engine()


TINY_FEATURES = """
[[features]]
name = "user_id"
kind = "categorical"
side = "context"
dim = 8

[[features]]
name = "device"
kind = "categorical"
side = "context"
dim = 4

[[features]]
name = "user_hist_categories"
kind = "sequence"
max_len = 5
dim = 8
side = "context"

[[features]]
name = "item_id"
kind = "categorical"
dim = 8

[[features]]
name = "item_category"
kind = "categorical"
dim = 8

[[features]]
name = "item_price"
kind = "numeric"
transform = "log1p_standardize"

[[features]]
name = "position"
kind = "bucketize"
buckets = 4
dim = 4
"""

TINY_TASKS = """
[tasks]
click = { label = "click", oracle = { p = "true_p_click" } }
favorite = { label = "favorite", after = "click" }
pay = { label = "pay", after = "order" }

[tasks.order]
label = "order"
after = "click"
via = "favorite"
oracle = { p = "true_p_order", p_cond = "true_pc_order", label_cond = "cf_order" }

[tasks.dwell]
label = "dwell_time"
type = "regression"
after = "click"
loss = "log_mse"
weight = 0.1
"""


def tiny_config_text(funnel: Path, *, tasks: str = TINY_TASKS, model: str = "",
                     extra: str = "") -> str:
    """rankengine.testing's tiny config with the suite's features and tasks, two epochs."""
    return testing.tiny_config_text(funnel, tasks=tasks, model=model or testing.DEFAULT_MODEL,
                                    features=TINY_FEATURES, epochs=2, batch_size=512, lr=3e-3,
                                    extra=extra)


@pytest.fixture
def tiny_config(tmp_path: Path, funnel_dir: Path) -> Path:
    path = tmp_path / "engine.toml"
    path.write_text(tiny_config_text(funnel_dir))
    return path
