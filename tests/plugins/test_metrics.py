from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankengine.pluginmanager import Engine


def metric(engine: Engine, name: str):
    return engine.components.metrics.get(name).factory.fn


def brute_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_matches_pairwise_definition_with_ties(engine: Engine, rows: list) -> None:
    y = np.array([r[0] for r in rows], dtype=float)
    p = np.array([r[1] for r in rows], dtype=float) / 5
    auc = metric(engine, "auc")(y, p, None)
    if 0 < y.sum() < len(y):
        assert auc == pytest.approx(brute_auc(y, p))
    else:
        assert np.isnan(auc)


def test_gauc_weights_groups_by_size_and_skips_one_class_groups(engine: Engine) -> None:
    y = np.array([1, 0, 0, 1, 0, 1, 1])
    p = np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.3, 0.4])
    g = np.array([0, 0, 1, 1, 1, 2, 2])  # group 2 has only positives
    expected = (2 * 1.0 + 3 * 0.0) / 5
    assert metric(engine, "gauc")(y, p, g) == pytest.approx(expected)


def test_logloss_calibration_rmse(engine: Engine) -> None:
    y = np.array([1.0, 0.0])
    p = np.array([0.8, 0.4])
    assert metric(engine, "logloss")(y, p, None) == pytest.approx(
        -(np.log(0.8) + np.log(0.6)) / 2)
    assert metric(engine, "calibration")(y, p, None) == pytest.approx(0.6 / 0.5)
    assert metric(engine, "rmse")(np.array([1.0, 3.0]), np.array([2.0, 3.0]), None) == \
        pytest.approx(np.sqrt(0.5))


def test_ece_is_the_mass_weighted_gap_of_equal_mass_buckets(engine: Engine) -> None:
    ece = metric(engine, "ece")
    rng = np.random.default_rng(0)
    p = rng.uniform(0.0, 0.3, 200_000)
    calibrated = (rng.random(len(p)) < p).astype(float)
    # labels drawn from p: only sampling noise (~0.002 with 20,000 rows a bucket)
    assert ece(calibrated, p, None) < 0.004
    # Predicting twice the true rate: each bucket is off by its mean p / 2.
    assert ece(calibrated, 2 * p, None) == pytest.approx(np.mean(p), rel=0.02)
    # 20 rows, 10 buckets of 2 sorted by p: hand-computed.
    p = np.linspace(0.05, 0.95, 20)
    y = np.zeros(20)
    y[[1, 3, 15, 17, 18, 19]] = 1.0
    buckets = np.split(np.arange(20), 10)
    want = sum(2 * abs(p[b].mean() - y[b].mean()) for b in buckets) / 20
    assert ece(y, p, None) == pytest.approx(want)
    # Direction: lower is better, so early stopping and reports rank it that way.
    assert engine.components.metrics.get("ece").factory.direction == "lower"


def test_decile_calibration_is_the_worst_ratio_over_deciles_skipping_ones_without_positives(
        engine: Engine) -> None:
    decile = metric(engine, "decile_calibration")
    # 20 rows, 10 deciles of 2 sorted by p; per decile (mean p, mean label) → |ratio - 1|:
    # (0.1, 0) skipped, (0.2, 0.5) 0.6, (0.3, 0.5) 0.4, (0.4, 0.5) 0.2, (0.5, 0.5) 0,
    # (0.6, 0.5) 0.2, (0.7, 1) 0.3, (0.8, 1) 0.2, (0.9, 1) 0.1, (0.95, 1) 0.05
    p = np.repeat([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], 2)
    y = np.array([0, 0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=float)
    assert decile(y, p, None) == pytest.approx(0.6)
    shuffle = np.random.default_rng(3).permutation(20)  # sorted by p, not by row order
    assert decile(y[shuffle], p[shuffle], None) == pytest.approx(0.6)
    # a positive in the lowest decile: it is no longer skipped, its ratio 0.1 / 0.5 wins
    y[0] = 1.0
    assert decile(y, p, None) == pytest.approx(0.8)
    info = engine.components.metrics.get("decile_calibration").factory
    assert (info.direction, info.headline, info.label) == ("lower", False, "calib/decile")


def test_decile_calibration_is_zero_when_every_decile_is_calibrated(engine: Engine) -> None:
    # decile k (100 rows) predicts k/10 and holds 10·k positives
    p = np.repeat(np.arange(1, 11) / 10, 100)
    y = np.concatenate([np.r_[np.ones(10 * k), np.zeros(100 - 10 * k)] for k in range(1, 11)])
    assert metric(engine, "decile_calibration")(y, p, None) == pytest.approx(0.0, abs=1e-12)
    # over-predicting by a tenth everywhere is 0.1 in every decile
    assert metric(engine, "decile_calibration")(y, p * 1.1, None) == pytest.approx(0.1)


def test_decile_calibration_catches_what_ece_and_the_global_ratio_average_away(
        engine: Engine) -> None:
    """Under-prediction in the bottom decile and over-prediction in the top one cancel in the
    mean, and are two small absolute gaps for ECE; the bottom decile's ratio is 1/3."""
    p = np.repeat(np.r_[0.01, np.arange(2, 10) / 10, 0.92], 100)
    positives = [3, *range(20, 100, 10), 90]  # rate 0.03 in the bottom decile, 0.90 at the top
    y = np.concatenate([np.r_[np.ones(k), np.zeros(100 - k)] for k in positives])
    assert metric(engine, "calibration")(y, p, None) == pytest.approx(1.0)
    assert metric(engine, "ece")(y, p, None) == pytest.approx(0.004)  # (0.02 + 0.02) / 10
    assert metric(engine, "decile_calibration")(y, p, None) == pytest.approx(2 / 3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 4)), min_size=1, max_size=45))
def test_decile_calibration_and_ece_share_array_split_deciles_with_ties(engine: Engine,
                                                                       rows: list) -> None:
    y = np.array([r[0] for r in rows], dtype=float)
    p = np.array([r[1] for r in rows], dtype=float) / 4 + 0.05
    buckets = np.array_split(np.argsort(p, kind="stable"), min(10, len(p)))
    ratios = [p[b].mean() / y[b].mean() for b in buckets if y[b].sum() > 0]
    got = metric(engine, "decile_calibration")(y, p, None)
    if ratios:
        assert got == pytest.approx(max(abs(r - 1) for r in ratios))
    else:
        assert np.isnan(got)
    assert metric(engine, "ece")(y, p, None) == pytest.approx(
        sum(len(b) * abs(p[b].mean() - y[b].mean()) for b in buckets) / len(p))


@pytest.mark.parametrize(("name", "y", "p", "groups", "reason"), [
    ("auc", [], [], None, "no rows"),
    ("auc", [0, 0, 0], [0.1, 0.2, 0.3], None, "no positive labels"),
    ("auc", [1, 1], [0.1, 0.2], None, "no negative labels"),
    ("gauc", [], [], [], "no rows"),
    ("gauc", [1, 0, 1], [0.5, 0.2, 0.3], [0, 1, 2], "no group has both positive and negative"),
    ("logloss", [], [], None, "no rows"),
    ("calibration", [0, 0], [0.2, 0.4], None, "mean label is 0"),
    ("calibration", [], [], None, "no rows"),
    ("rmse", [], [], None, "no rows"),
    ("ece", [], [], None, "no rows"),
    ("decile_calibration", [], [], None, "no rows"),
    ("decile_calibration", [0, 0, 0], [0.2, 0.4, 0.6], None, "mean label is 0 in every decile"),
])
def test_metrics_undefined_on_degenerate_data_say_why(engine: Engine, name: str, y: list,
                                                      p: list, groups: list | None,
                                                      reason: str) -> None:
    value = metric(engine, name)(np.array(y, dtype=float), np.array(p, dtype=float),
                                 None if groups is None else np.array(groups, dtype=np.int64))
    assert np.isnan(value)  # never inf, never an exception
    assert reason in getattr(value, "reason", "")


def test_grouped_auc_of_no_rows_is_empty() -> None:
    from rankengine_plugins.metrics import grouped_auc

    per_group, sizes = grouped_auc(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
    assert len(per_group) == 0 and len(sizes) == 0


def test_single_row_metrics_that_exist_are_numbers(engine: Engine) -> None:
    y, p = np.array([1.0]), np.array([0.8])
    assert metric(engine, "logloss")(y, p, None) == pytest.approx(-np.log(0.8))
    assert metric(engine, "calibration")(y, p, None) == pytest.approx(0.8)
    assert metric(engine, "rmse")(np.array([2.0]), np.array([1.5]), None) == pytest.approx(0.5)
    assert np.isnan(metric(engine, "auc")(y, p, None))
