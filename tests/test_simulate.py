"""Tests for rankengine.simulate: schema, funnel semantics, knobs, and the parquet writer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from rankengine import simulate
from rankengine.simulate import SimulationConfig, simulate_funnel, write_funnel

SMALL = SimulationConfig(requests=2_000, users=500, items=300, segments=8, categories=12,
                         brands=30, seed=3)
EXPECTED_SCHEMA = [
    ("request_id", pa.int64()), ("position", pa.int64()), ("user_id", pa.int64()),
    ("item_id", pa.int64()), ("user_segment", pa.int64()), ("device", pa.string()),
    ("hour", pa.int64()), ("item_category", pa.int64()), ("item_brand", pa.int64()),
    ("item_price", pa.float64()), ("user_hist_categories", pa.list_(pa.int64())),
    ("click", pa.int64()), ("favorite", pa.int64()), ("order", pa.int64()), ("pay", pa.int64()),
    ("dwell_time", pa.float64()), ("true_p_click", pa.float64()),
    ("true_pc_favorite", pa.float64()), ("true_pc_order", pa.float64()),
    ("true_pc_pay", pa.float64()), ("true_p_favorite", pa.float64()),
    ("true_p_order", pa.float64()), ("true_p_pay", pa.float64()),
    ("cf_favorite", pa.int64()), ("cf_order", pa.int64()), ("cf_pay", pa.int64()),
]
TASKS = ("click", "favorite", "order", "pay")


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank-based ROC AUC (Mann-Whitney U) with average ranks for ties."""
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    pos = float(label.sum())
    neg = label.size - pos
    return float((ranks[label == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def cols(table: pa.Table) -> dict[str, np.ndarray]:
    return {n: table.column(n).to_numpy() for n in table.column_names
            if n not in ("device", "user_hist_categories")}


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


@pytest.fixture(scope="module")
def big() -> dict[str, np.ndarray]:
    return cols(simulate_funnel(SimulationConfig(requests=20_000)))  # 200k rows


@pytest.fixture(scope="module")
def small_table() -> pa.Table:
    return simulate_funnel(SMALL)


def test_auc_helper() -> None:
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 0])) == 0.5


def test_schema_and_value_ranges(small_table: pa.Table) -> None:
    t, cfg = small_table, SMALL
    assert [(f.name, f.type) for f in t.schema] == EXPECTED_SCHEMA
    assert t.num_rows == cfg.requests * cfg.slate_size
    c = cols(t)
    assert np.array_equal(c["request_id"], np.repeat(np.arange(cfg.requests), cfg.slate_size))
    assert np.array_equal(c["position"], np.tile(np.arange(1, 11), cfg.requests))
    assert set(t.column("device").unique().to_pylist()) == {"ios", "android", "web", "mini_app"}
    assert c["hour"].min() >= 0 and c["hour"].max() <= 23 and len(np.unique(c["hour"])) > 12
    assert c["user_segment"].min() >= 0 and c["user_segment"].max() < cfg.segments
    assert c["item_id"].max() < cfg.items and c["user_id"].max() < cfg.users
    assert c["item_category"].max() < cfg.categories and c["item_brand"].max() < cfg.brands
    assert (c["item_price"] > 0).all()
    # Slates show distinct items; a user's features are constant within a request.
    slate = np.sort(c["item_id"].reshape(-1, cfg.slate_size), axis=1)
    assert (slate[:, 1:] != slate[:, :-1]).all()
    assert (c["user_id"].reshape(-1, cfg.slate_size).std(axis=1) == 0).all()
    lengths = pc.list_value_length(t.column("user_hist_categories")).to_numpy()
    assert lengths.min() == 0 and lengths.max() == 10
    flat = pc.list_flatten(t.column("user_hist_categories")).to_numpy()
    assert flat.min() >= 0 and flat.max() < cfg.categories
    clicked = c["click"] == 1
    assert (c["dwell_time"][~clicked] == 0).all() and (c["dwell_time"][clicked] > 0).all()
    for name in ("click", "favorite", "order", "pay", "cf_favorite", "cf_order", "cf_pay"):
        assert set(np.unique(c[name])) == {0, 1}, name


def test_determinism(small_table: pa.Table) -> None:
    assert simulate_funnel(SMALL).equals(small_table)
    other = simulate_funnel(dataclasses.replace(SMALL, seed=4))
    assert not other.equals(small_table)
    assert not np.array_equal(cols(other)["item_id"], cols(small_table)["item_id"])


def test_funnel_consistency_and_counterfactuals(small_table: pa.Table) -> None:
    c = cols(small_table)
    assert (c["favorite"] <= c["click"]).all() and (c["order"] <= c["click"]).all()
    assert (c["pay"] <= c["order"]).all()
    assert np.array_equal(c["favorite"], c["click"] & c["cf_favorite"])
    assert np.array_equal(c["order"], c["click"] & c["cf_order"])
    assert np.array_equal(c["pay"], c["order"] & c["cf_pay"])
    # Counterfactuals are drawn on every row, so they fire on unclicked rows too.
    assert c["cf_order"][c["click"] == 0].sum() > 0 and c["cf_pay"][c["order"] == 0].sum() > 0


def test_inconsistent_rate_corrupts_only_children(small_table: pa.Table) -> None:
    clean = cols(small_table)
    dirty = cols(simulate_funnel(dataclasses.replace(SMALL, inconsistent_rate=0.05)))
    bad = ((dirty["favorite"] > dirty["click"]) | (dirty["order"] > dirty["click"])
           | (dirty["pay"] > dirty["order"]))
    assert abs(bad.mean() - 0.05) < 0.002
    for name in ("click", "cf_favorite", "cf_order", "cf_pay", "true_p_order", "dwell_time"):
        assert np.array_equal(clean[name], dirty[name]), name
    flips = sum((dirty[n] - clean[n]) for n in ("favorite", "order", "pay"))
    assert np.array_equal(flips, bad.astype(np.int64))  # exactly one 0 -> 1 flip per bad row


def test_truths_consistent(small_table: pa.Table) -> None:
    c = cols(small_table)
    assert np.array_equal(c["true_p_favorite"], c["true_p_click"] * c["true_pc_favorite"])
    assert np.array_equal(c["true_p_order"], c["true_p_click"] * c["true_pc_order"])
    assert np.array_equal(c["true_p_pay"], c["true_p_order"] * c["true_pc_pay"])
    for name in [n for n in c if n.startswith("true_")]:
        assert ((c[name] > 0) & (c[name] < 1)).all(), name
    assert (c["true_p_favorite"] <= c["true_p_click"]).all()
    assert (c["true_p_pay"] <= c["true_p_order"]).all()
    assert (c["true_p_order"] <= c["true_p_click"]).all()


def test_base_rates_in_target_ranges(big: dict[str, np.ndarray]) -> None:
    clicks, orders = big["click"].sum(), big["order"].sum()
    assert 0.08 <= big["click"].mean() <= 0.12
    assert 0.15 <= big["favorite"].sum() / clicks <= 0.25
    assert 0.10 <= orders / clicks <= 0.20
    assert 0.60 <= big["pay"].sum() / orders <= 0.80
    # The truths are calibrated: expected and observed counts agree.
    for task in TASKS:
        assert abs(big[f"true_p_{task}"].mean() / big[task].mean() - 1) < 0.05, task


def test_oracle_auc_well_above_chance(big: dict[str, np.ndarray]) -> None:
    for task in TASKS:
        assert auc(big[f"true_p_{task}"], big[task]) > 0.75, task


def test_favorite_boost_is_real() -> None:
    def gap(boost: float) -> float:
        c = cols(simulate_funnel(dataclasses.replace(SMALL, favorite_order_boost=boost)))
        fav = c["cf_favorite"] == 1
        return float(c["cf_order"][fav].mean() - c["cf_order"][~fav].mean())

    with_boost, without = gap(1.5), gap(0.0)
    assert with_boost > 0.1
    assert with_boost > without + 0.08


def test_conversion_correlation_direction() -> None:
    corr = []
    for c in (-0.9, 0.0, 0.9):
        t = cols(simulate_funnel(dataclasses.replace(SMALL, conversion_correlation=c)))
        corr.append(np.corrcoef(logit(t["true_p_click"]), logit(t["true_pc_order"]))[0, 1])
    assert corr[0] < -0.3 and corr[2] > 0.3
    assert corr[0] + 0.2 < corr[1] < corr[2] - 0.2


def test_selection_bias_clicked_rows_are_not_representative() -> None:
    for c, sign in ((0.9, 1), (-0.9, -1)):
        t = cols(simulate_funnel(dataclasses.replace(SMALL, conversion_correlation=c)))
        clicked = t["true_pc_order"][t["click"] == 1].mean()
        assert sign * (clicked - t["true_pc_order"].mean()) > 0.03


def test_position_bias(big: dict[str, np.ndarray]) -> None:
    ctr = np.array([big["click"][big["position"] == k].mean() for k in range(1, 11)])
    assert ctr[0] > 2 * ctr[-1] and ctr[0] > ctr[1] > ctr[4] > ctr[9]
    flat = cols(simulate_funnel(dataclasses.replace(SMALL, position_bias=0.0)))
    ctr0 = [flat["click"][flat["position"] == k].mean() for k in (1, 10)]
    assert abs(ctr0[0] - ctr0[1]) < 0.03
    # Position only touches the click.
    pcs = [flat["true_pc_order"][flat["position"] == k].mean() for k in (1, 10)]
    assert abs(pcs[0] - pcs[1]) < 0.01


def test_features_carry_signal(small_table: pa.Table, big: dict[str, np.ndarray]) -> None:
    t = small_table
    hist = t.column("user_hist_categories")
    parent = pc.list_parent_indices(hist).to_numpy()
    cat = t.column("item_category").to_numpy()
    hit = pc.list_flatten(hist).to_numpy() == cat[parent]
    in_hist = np.bincount(parent, weights=hit, minlength=t.num_rows) > 0
    p_click = t.column("true_p_click").to_numpy()
    assert p_click[in_hist].mean() > 1.3 * p_click[~in_hist].mean()
    clicked = big["click"] == 1
    r = np.corrcoef(np.log(big["dwell_time"][clicked]), big["true_pc_order"][clicked])[0, 1]
    assert r > 0.2  # dwell rises with relevance
    # Prices are category dependent: between-category spread dominates.
    lp, cats = np.log(big["item_price"]), big["item_category"]
    cat_means = np.bincount(cats, lp) / np.maximum(np.bincount(cats), 1)
    assert cat_means[np.bincount(cats) > 0].std() > 0.4


def test_tiny_worlds_work() -> None:
    cfg = SimulationConfig(requests=5, slate_size=4, users=1, items=2, segments=1,
                           categories=1, brands=1, factor_dim=1, id_noise=0.0)
    t = simulate_funnel(cfg)
    assert t.num_rows == 20 and (t.column("item_id").to_numpy() < 2).all()


def _read(paths: dict[str, Path], name: str) -> pa.Table:
    return ds.dataset(paths[name], format="parquet").to_table()


def test_write_funnel_splits_by_request(tmp_path: Path) -> None:
    paths = write_funnel(tmp_path / "out", SMALL)
    assert set(paths) == {"train", "valid", "test", "simulation"}
    tables = {n: pq.read_table(paths[n]) for n in ("train", "valid", "test")}
    assert paths["train"] == tmp_path / "out" / "train.parquet"
    ids = {n: set(t.column("request_id").to_pylist()) for n, t in tables.items()}
    assert not (ids["train"] & ids["valid"] or ids["train"] & ids["test"]
                or ids["valid"] & ids["test"])
    assert sum(len(v) for v in ids.values()) == SMALL.requests
    assert abs(len(ids["train"]) - 1600) <= 1 and abs(len(ids["valid"]) - 200) <= 1
    full = simulate_funnel(SMALL)
    assert sum(t.num_rows for t in tables.values()) == full.num_rows
    rejoined = pa.concat_tables(tables.values()).sort_by("request_id")
    assert rejoined.sort_by([("request_id", "ascending"), ("position", "ascending")]).equals(full)
    meta = json.loads(paths["simulation"].read_text())
    assert meta["config"] == dataclasses.asdict(SMALL)
    for name, t in tables.items():
        split = meta["splits"][name]
        assert split["rows"] == t.num_rows and split["requests"] == len(ids[name])
        for task in TASKS:
            assert split["label_rates"][task] == pytest.approx(np.mean(t.column(task)))
    assert split["conditional_rates"]["pay_given_order"] == pytest.approx(
        pc.sum(tables["test"]["pay"]).as_py() / pc.sum(tables["test"]["order"]).as_py())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "simulation.json", "test.parquet", "train.parquet", "valid.parquet"]


def test_write_funnel_shards_and_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_funnel(out, SMALL)
    paths = write_funnel(out, dataclasses.replace(SMALL, seed=11), shards=3)
    for name in ("train", "valid", "test"):
        assert paths[name].is_dir() and not (out / f"{name}.parquet").exists()
        files = sorted(p.name for p in paths[name].iterdir())
        assert files == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
        per_file = [set(pq.read_table(paths[name] / f).column("request_id").to_pylist())
                    for f in files]
        assert all(per_file) and not (per_file[0] & per_file[1] or per_file[1] & per_file[2])
    total = sum(_read(paths, n).num_rows for n in ("train", "valid", "test"))
    assert total == SMALL.requests * SMALL.slate_size
    assert json.loads(paths["simulation"].read_text())["config"]["seed"] == 11
    # Sharded over sharded: the old directories are replaced whole.
    paths = write_funnel(out, dataclasses.replace(SMALL, seed=12), shards=2)
    assert sorted(p.name for p in paths["train"].iterdir()) == [
        "part-00000.parquet", "part-00001.parquet"]
    assert sum(_read(paths, n).num_rows for n in ("train", "valid", "test")) == total
    # Back to single files: the shard directories are replaced, not left beside them.
    paths = write_funnel(out, SMALL)
    assert sorted(p.name for p in out.iterdir()) == [
        "simulation.json", "test.parquet", "train.parquet", "valid.parquet"]
    assert json.loads(paths["simulation"].read_text())["config"]["seed"] == SMALL.seed


def test_write_funnel_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    write_funnel(out, SMALL)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def failing_write(table: pa.Table, where: object, **options: object) -> None:
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        pq.write_table(table, where, **options)

    monkeypatch.setattr(simulate.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_funnel(out, dataclasses.replace(SMALL, seed=99))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp dir left


def test_empty_split_is_written(tmp_path: Path) -> None:
    paths = write_funnel(tmp_path, SMALL, splits=(1.0, 0.0, 0.0))
    valid = pq.read_table(paths["valid"])
    assert valid.num_rows == 0 and [f.name for f in valid.schema] == [n for n, _ in EXPECTED_SCHEMA]
    meta = json.loads(paths["simulation"].read_text())
    assert meta["splits"]["train"]["rows"] == SMALL.requests * SMALL.slate_size
    assert meta["splits"]["valid"]["label_rates"]["click"] is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("conversion_correlation", 1.5, "conversion_correlation must be in [-1, 1], got 1.5"),
        ("conversion_correlation", float("nan"), "conversion_correlation must be a finite"),
        ("requests", 0, "requests must be >= 1, got 0"),
        ("users", -3, "users must be >= 1, got -3"),
        ("items", 0, "items must be >= 1"),
        ("slate_size", 2.5, "slate_size must be a finite integer, got 2.5"),
        ("factor_dim", True, "factor_dim must be a finite integer"),
        ("inconsistent_rate", 1.2, "inconsistent_rate must be in [0, 1], got 1.2"),
        ("id_noise", -0.1, "id_noise must be >= 0, got -0.1"),
        ("position_bias", -1.0, "position_bias must be >= 0"),
        ("favorite_order_boost", float("inf"), "favorite_order_boost must be a finite"),
        ("seed", -1, "seed must be >= 0"),
    ],
)
def test_invalid_config(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        simulate_funnel(SimulationConfig(**{field: value}))  # type: ignore[arg-type]
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"splits": (0.5, 0.5)}, "splits must be 3 non-negative numbers summing to 1"),
        ({"splits": (0.9, 0.2, -0.1)}, "splits must be"),
        ({"splits": (0.5, 0.3, 0.3)}, "splits must be"),
        ({"shards": 0}, "shards must be >= 1, got 0"),
    ],
)
def test_invalid_write_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        write_funnel(tmp_path / "out", SMALL, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        # past these, numpy's index arithmetic or the logits overflow (opaque error or inf)
        ("requests", 10**20, "requests must be at most 2.14748e+09, got 100000000000000000000"),
        ("slate_size", 2**63, "slate_size must be at most 2.14748e+09"),
        pytest.param("items", 10**400, "items must be at most 2.14748e+09",
                     id="items-past-any-float"),
        ("position_bias", 1e308, "position_bias must be at most 1e+06, got 1e+308"),
        ("logger_bias", 1e300, "logger_bias must be at most 1e+06"),
        ("favorite_order_boost", -1e300, "favorite_order_boost must be at most 1e+06 in size"),
    ],
)
def test_extreme_config_values_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        SimulationConfig(**{field: value})  # type: ignore[arg-type]
    assert message in str(err.value)


def test_cli_extremes_and_an_output_under_a_file_are_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rankengine.cli import cli

    blocker = tmp_path / "file"
    blocker.write_text("")
    for args, message in (
        (["-o", str(blocker / "f")], f"{blocker / 'f'}: cannot create the output directory: a "
                                     f"part of the path is a file, not a folder"),
        (["-o", str(tmp_path / "f"), "--position-bias", "1e308"], "position_bias must be at "
                                                                  "most 1e+06"),
        (["-o", str(tmp_path / "f"), "--requests", str(10**20)], "requests must be at most"),
        (["-o", str(tmp_path / "f"), "--shards", "1000000"], "1<=x<=100000"),
    ):
        result = CliRunner().invoke(cli, ["simulate", "--requests", "20", *args])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code != 0 and len(lines) == 1 and message in lines[0], result.output
        assert "internal error" not in lines[0] and "Warning" not in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
