"""Model quality on real and simulated data: the numbers the engine promises (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankengine.config import ComponentRef, EngineConfig, load_config
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_census_mmoe_reaches_the_paper_grade_aucs() -> None:
    """MMoE (emb 16, 4 experts of 64, towers 32, 3 epochs, batch 1024), test half of the
    census test file: income AUC >= 0.950, never married AUC >= 0.994."""
    config = load_config(REPO / "examples/census/engine.toml")
    assert config.train.epochs == 3 and config.train.batch_size == 1024
    assert config.model.backbone.params == {"experts": 4, "expert_hidden": [64]}
    trained = train(config, progress=False)
    test = trained.result.metrics["test"]
    assert test["income"]["auc"] >= 0.950
    assert test["never_married"]["auc"] >= 0.994
    assert trained.result.metrics["test"]["income"]["rows"] == pytest.approx(49_900, abs=500)


@pytest.fixture(scope="module")
def funnel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("funnel500k")
    write_funnel(out, SimulationConfig(requests=50_000, seed=7))  # 500k impressions
    return out


def demo_config(funnel: Path, cascade: ComponentRef | None = None) -> EngineConfig:
    config = load_config(REPO / "engine.toml")
    config.data.train = str(funnel / "train.parquet")
    config.data.valid = str(funnel / "valid.parquet")
    config.data.test = str(funnel / "test.parquet")
    if cascade is not None:
        config.model.cascade = cascade
    return config


@pytest.fixture(scope="module")
def esm2_result(funnel: Path):
    return train(demo_config(funnel), progress=False).training


@pytest.fixture(scope="module")
def esm2(esm2_result):
    return esm2_result.metrics["test"]


@pytest.fixture(scope="module")
def independent(funnel: Path):
    config = demo_config(funnel, ComponentRef(kind="independent"))
    return train(config, progress=False).result.metrics["test"]


def test_demo_model_is_close_to_the_oracle(esm2) -> None:
    gaps = {t: esm2[t]["oracle_auc"] - esm2[t]["auc"] for t in ("click", "favorite", "order",
                                                               "pay")}
    # Measured gaps are recorded in benchmarks/RESULTS.md; this bound catches regressions.
    assert all(gap < MAX_ORACLE_GAP for gap in gaps.values()), gaps
    assert esm2["dwell"]["rmse"] > 0


def test_entire_space_training_beats_the_clicked_subspace(esm2, independent) -> None:
    """The sample-selection-bias effect: the conditional heads judged on every impression (with
    the simulator's counterfactual labels) are better from ESM² than from models trained on the
    parent-positive rows only (measured: favorite +1.5, order +1.3, pay +0.7 points)."""
    for task in ("favorite", "order"):
        assert esm2[task]["auc_cond_entire"] > independent[task]["auc_cond_entire"] + 0.005
    # pay's counterfactual AUC rests on ~500 test positives two sparse parents deep: the same
    # code and seed gave ESM² 0.621 on one machine and 0.612 on another (float paths differ),
    # the independent model 0.613 on both; only a clear loss would be a regression there
    assert esm2["pay"]["auc_cond_entire"] > independent["pay"]["auc_cond_entire"] - 0.01
    for task in ("click", "favorite", "order", "pay"):
        assert esm2[task]["auc"] > independent[task]["auc"]


def test_the_demo_calibrator_brings_every_node_towards_calibrated(esm2_result) -> None:
    """engine.toml's Platt calibrator, fitted on validation, judged on test: the mean
    prediction moves towards the mean label, log loss does not get worse, AUC stays."""
    before, after = esm2_result.uncalibrated_metrics["test"], esm2_result.metrics["test"]
    for task in ("click", "favorite", "order", "pay"):
        assert abs(after[task]["calibration"] - 1) <= abs(before[task]["calibration"] - 1) \
            + 0.01, task
        assert after[task]["calibration"] == pytest.approx(1.0, abs=0.08), task
        assert after[task]["logloss"] <= before[task]["logloss"] + 1e-4, task
        assert after[task]["auc"] == pytest.approx(before[task]["auc"], abs=0.002), task
        assert after[task]["ece"] <= before[task]["ece"] + 1e-3, task


MAX_ORACLE_GAP = 0.03
