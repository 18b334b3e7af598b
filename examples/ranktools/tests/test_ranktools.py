"""Tests of the installed plugin, using rankengine's pytest fixtures (rankengine.testing)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from rankengine_ranktools import ndcg_at

from rankengine.pluginmanager import Engine, discover_plugins
from rankengine.testing import train_tiny

TASKS = ["click", "favorite", "order", "pay", "dwell"]


@pytest.fixture
def engine(rankengine_engine: Callable[..., Engine]) -> Engine:
    return rankengine_engine(enabled=["builtin", "ranktools"])


def fusion(engine: Engine, kind: str, **params: object) -> Callable[[torch.Tensor], torch.Tensor]:
    component = engine.components.fusions.get(kind)
    built: Callable[[torch.Tensor], torch.Tensor] = component.factory(
        TASKS, component.parse_params(params))
    return built


def test_the_plugin_is_installed_through_its_entry_point(engine: Engine) -> None:
    info = discover_plugins()["ranktools"]
    assert (info.distribution, info.origin) == ("rankengine-ranktools", "third-party")
    assert engine.plugins["ranktools"].hooks == ["rankengine_register_fusions",
                                                 "rankengine_register_metrics"]
    assert engine.components.fusions.get("smoothed_product").plugin == "ranktools"
    assert {"ndcg_5", "ndcg_10"} <= set(engine.components.metrics.names())


def test_smoothed_product_without_smoothing_is_the_weighted_product(engine: Engine) -> None:
    p = torch.rand(500, 5, generator=torch.Generator().manual_seed(0))
    weights = {"click": 1.0, "order": 0.5, "pay": 2.0}
    ours = fusion(engine, "smoothed_product", weights=weights, alpha=0.0)(p)
    builtin = fusion(engine, "weighted_product", weights=weights)(p)
    torch.testing.assert_close(ours, builtin, rtol=1e-5, atol=0.0)


def test_large_smoothing_ranks_like_the_weighted_sum(engine: Engine) -> None:
    p = torch.rand(300, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = {"click": 1.0, "order": 3.0}
    product = fusion(engine, "weighted_product", weights=weights)(p)
    smooth = fusion(engine, "smoothed_product", weights=weights, alpha=1e6)(p)
    summed = fusion(engine, "weighted_sum", weights=weights)(p)
    assert torch.equal(smooth.argsort(), summed.argsort())
    assert not torch.equal(product.argsort(), summed.argsort())  # the knob matters


def test_smoothing_keeps_a_zero_probability_from_zeroing_the_score(engine: Engine) -> None:
    p = torch.tensor([[0.9, 0.0, 0.5, 0.0, 0.0], [0.1, 0.0, 0.1, 0.0, 0.0]])
    score = fusion(engine, "smoothed_product", weights={"click": 1.0, "pay": 1.0},
                   alpha={"pay": 0.05})(p)
    assert score[0] > score[1] > 0
    assert float(score.max()) <= 1.0


def test_smoothed_product_names_unknown_tasks(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"^alpha name unknown task\(s\) \[.buy.\]"):
        fusion(engine, "smoothed_product", weights={"click": 1.0}, alpha={"buy": 0.1})


def brute_ndcg(y: np.ndarray, p: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Expected NDCG@k over every order consistent with the predictions (ties broken all ways)."""
    values = []
    for g in np.unique(groups):
        gy, gp = y[groups == g], p[groups == g]
        ideal = sum(v / math.log2(i + 2) for i, v in enumerate(sorted(gy, reverse=True)[:k]))
        if ideal == 0:
            continue
        orders = [o for o in itertools.permutations(range(len(gy)))
                  if all(gp[o[i]] >= gp[o[i + 1]] for i in range(len(o) - 1))]
        dcg = np.mean([sum(gy[j] / math.log2(i + 2) for i, j in enumerate(o[:k]))
                       for o in orders])
        values.append(dcg / ideal)
    return float(np.mean(values)) if values else float("nan")


def test_ndcg_matches_a_brute_force_reference() -> None:
    rng = np.random.default_rng(2)
    for k in (1, 3, 5):
        groups = rng.integers(0, 6, 40)
        y = (rng.random(40) < 0.3).astype(np.float64)
        p = rng.integers(0, 4, 40) / 4.0  # many ties
        keep = np.concatenate([np.flatnonzero(groups == g)[:6] for g in np.unique(groups)])
        y, p, groups = y[keep], p[keep], groups[keep]
        assert ndcg_at(k)(y, p, groups) == pytest.approx(brute_ndcg(y, p, groups, k), abs=1e-12)


def test_ndcg_by_hand() -> None:
    y = np.array([0, 1, 0, 1, 0, 0], dtype=np.float64)
    p = np.array([0.9, 0.8, 0.1, 0.3, 0.2, 0.7])
    groups = np.array([0, 0, 0, 1, 1, 1])
    # Request 0: the positive is ranked 2nd → (1/log2 3) / 1. Request 1: ranked 2nd as well.
    assert ndcg_at(10)(y, p, groups) == pytest.approx(1 / math.log2(3))
    assert ndcg_at(1)(y, p, groups) == 0.0
    assert math.isnan(ndcg_at(5)(np.zeros(3), np.ones(3), np.zeros(3, dtype=np.int64)))


def test_training_with_the_plugin(rankengine_config: Callable[..., Path],
                                  engine: Engine) -> None:
    config = rankengine_config(
        plugins=["builtin", "ranktools"],
        fusion='kind = "smoothed_product"\nweights = { click = 1.0, pay = 1.0 }\nalpha = 0.05',
        extra='[evaluate]\nmetrics = ["auc", "ndcg_10"]')
    trained = train_tiny(config)
    valid = trained.result.metrics["valid"]
    assert 0.0 < valid["click"]["ndcg_10"] <= 1.0
    assert "gauc" not in valid["click"]

