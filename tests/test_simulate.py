"""Tests for rankengine.simulate: schema, funnel semantics, knobs, and the parquet writer."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
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
    t = simulate_funnel(dataclasses.replace(cfg, sequence_effect=1.0, sequence_max_len=3))
    assert t.num_rows == 20 and pc.max(pc.list_value_length(t["seq_item_id"])).as_py() <= 3
    assert (pc.list_flatten(t["seq_item_id"]).to_numpy() < 2).all()


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
        ("sequence_effect", -0.5, "sequence_effect must be >= 0, got -0.5"),
        ("sequence_effect", float("nan"), "sequence_effect must be a finite number, got nan"),
        ("sequence_effect", "1", "sequence_effect must be a finite number, got '1'"),
        ("sequence_max_len", 0, "sequence_max_len must be >= 1, got 0"),
        ("sequence_max_len", 2.5, "sequence_max_len must be a finite integer, got 2.5"),
        ("write_sequences", 1, "write_sequences must be true or false, got 1"),
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
        ("sequence_effect", 1e300, "sequence_effect must be at most 1e+06"),
        ("sequence_max_len", 10**6, "sequence_max_len must be at most 10000, got 1000000"),
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
        (["-o", str(tmp_path / "f"), "--sequence-effect", "-1"], "sequence_effect must be >= 0"),
        (["-o", str(tmp_path / "f"), "--sequence-max-len", "0"], "sequence_max_len must be >= 1"),
    ):
        result = CliRunner().invoke(cli, ["simulate", "--requests", "20", *args])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code != 0 and len(lines) == 1 and message in lines[0], result.output
        assert "internal error" not in lines[0] and "Warning" not in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


# --- behaviour sequences (issue #17 item 3) ---------------------------------------------------

SEQ_COLUMNS = ["seq_item_id", "seq_category", "seq_brand", "seq_behaviour", "seq_time_gap"]
ON = dataclasses.replace(SMALL, sequence_effect=1.0)


def digest(table: pa.Table) -> str:
    """sha256 of the names, types and values of every column: integers, strings and list
    lengths exactly, floats rounded to float32 (float64 math may differ in its last bits on
    another CPU, as numpy picks SIMD kernels at run time; rows and draws may not)."""
    h = hashlib.sha256()
    for field, column in zip(table.schema, table.columns, strict=True):
        h.update(f"{field.name}:{field.type};".encode())
        if pa.types.is_list(field.type):
            h.update(pc.list_value_length(column).to_numpy().astype("<i8").tobytes())
            column = pc.list_flatten(column)
        if pa.types.is_string(column.type):
            h.update("\0".join(column.to_pylist()).encode())
            continue
        values = column.to_numpy()
        h.update(values.astype("<f4" if values.dtype.kind == "f" else "<i8").tobytes())
    return h.hexdigest()


# Digests of the simulator's output before it knew sequences (computed with the code of commit
# 84f6ee3): the world without sequences must stay exactly that world, because tests and the
# benchmark numbers rest on it.
BEFORE_SEQUENCES = {
    "small": ("f8ad8e5953cb6c567ba50179a4c3c600e6b0f9098012a23ef7d74c3cf70a1f33", SMALL),
    "knobs": ("ad47f3d2259b47ee20aa28f2044d0fa53aec8bbdf5a303f59d7c9c33fcf18812",
              dataclasses.replace(SMALL, logger_bias=0.7, inconsistent_rate=0.02, seed=5)),
}


@pytest.fixture(scope="module")
def seq_table() -> pa.Table:
    return simulate_funnel(ON)


@pytest.fixture(scope="module")
def placebo_table() -> pa.Table:
    """The same world and sequences, no effect: its truths are the oracle without the term."""
    return simulate_funnel(dataclasses.replace(SMALL, write_sequences=True))


@pytest.mark.parametrize("name", sorted(BEFORE_SEQUENCES))
def test_sequences_off_is_the_world_before_them(name: str) -> None:
    expected, config = BEFORE_SEQUENCES[name]
    assert config.sequence_effect == 0 and not config.write_sequences  # the defaults
    assert digest(simulate_funnel(config)) == expected


def test_digest_sees_every_column(small_table: pa.Table) -> None:
    assert digest(small_table) == BEFORE_SEQUENCES["small"][0]
    for name in ("user_hist_categories", "device", "true_p_click", "cf_pay"):
        i = small_table.schema.get_field_index(name)
        changed = small_table.column(name).take(np.arange(small_table.num_rows)[::-1])
        assert digest(small_table.set_column(i, name, changed)) != digest(small_table), name


def test_sequence_columns_only_add(seq_table: pa.Table, placebo_table: pa.Table,
                                   small_table: pa.Table) -> None:
    names = [n for n, _ in EXPECTED_SCHEMA]
    at = names.index("user_hist_categories") + 1
    assert seq_table.column_names == names[:at] + SEQ_COLUMNS + names[at:]
    assert [(f.name, f.type) for f in seq_table.schema][at:at + 5] == (
        simulate.SEQUENCE_FIELDS)
    # A placebo changes nothing but the added columns; the effect changes the outcomes only.
    assert placebo_table.drop_columns(SEQ_COLUMNS).equals(small_table)
    features = names[:at] + SEQ_COLUMNS
    assert seq_table.select(features).equals(placebo_table.select(features))
    assert not np.array_equal(cols(seq_table)["true_p_click"], cols(small_table)["true_p_click"])


def test_sequences_are_aligned_recent_first_and_in_range(seq_table: pa.Table) -> None:
    t, cfg = seq_table, ON
    lengths = [pc.list_value_length(t[n]).to_numpy() for n in SEQ_COLUMNS]
    for other in lengths[1:]:
        assert np.array_equal(other, lengths[0])
    assert lengths[0].max() == cfg.sequence_max_len and lengths[0].min() == 0
    assert 0.1 < (lengths[0] == cfg.sequence_max_len).mean() < 0.9  # some short histories
    flat = {n: pc.list_flatten(t[n]).to_numpy() for n in SEQ_COLUMNS}
    assert flat["seq_item_id"].min() >= 0 and flat["seq_item_id"].max() < cfg.items
    assert flat["seq_category"].max() < cfg.categories and flat["seq_brand"].max() < cfg.brands
    assert set(np.unique(flat["seq_behaviour"])) == {0, 1, 2}
    assert np.bincount(flat["seq_behaviour"]).argmax() == simulate.BEHAVIOURS.index("click")
    # Side columns describe the item: its category and brand as the candidates show them.
    c = cols(t)
    item_cat = dict(zip(c["item_id"], c["item_category"], strict=True))
    item_brand = dict(zip(c["item_id"], c["item_brand"], strict=True))
    for item, cat, brand in zip(flat["seq_item_id"][:5000], flat["seq_category"][:5000],
                                flat["seq_brand"][:5000], strict=True):
        assert item_cat.get(item, cat) == cat and item_brand.get(item, brand) == brand
    # Gaps (hours) are positive and non-decreasing within a list: most recent first.
    gap, parent = flat["seq_time_gap"], pc.list_parent_indices(t["seq_time_gap"]).to_numpy()
    same_row = parent[1:] == parent[:-1]
    assert (gap >= 1 / 3600).all() and (np.diff(gap)[same_row] >= 0).all()
    assert (np.diff(gap)[same_row] > 0).mean() > 0.99
    # A request's rows share its sequence.
    firsts = np.flatnonzero(c["position"] == 1)
    for n in SEQ_COLUMNS:
        column = t[n].combine_chunks()
        assert column.take(firsts + 1).equals(column.take(firsts)), n


def test_sequences_are_what_happened_before_each_request(seq_table: pa.Table) -> None:
    """One behaviour log per user: of two requests of a user that both see the whole history
    (shorter than the limit), the earlier one's sequence is the tail of the later one's,
    shifted by the time between them."""
    t = seq_table.filter(pc.equal(seq_table["position"], 1))
    rows = t.select(["user_id", *SEQ_COLUMNS]).to_pylist()
    by_user: dict[int, list[dict[str, list[float]]]] = {}
    for row in rows:
        if len(row["seq_item_id"]) < ON.sequence_max_len:
            by_user.setdefault(row["user_id"], []).append(row)
    pairs = 0
    for seqs in by_user.values():
        seqs.sort(key=lambda r: len(r["seq_item_id"]))
        for early, late in itertools.pairwise(seqs):
            newer = len(late["seq_item_id"]) - len(early["seq_item_id"])
            for n in ("seq_item_id", "seq_behaviour"):
                assert late[n][newer:] == early[n]
            shift = np.subtract(late["seq_time_gap"][newer:], early["seq_time_gap"])
            # (two requests with no behaviour between them: either may be the later one)
            assert shift.size == 0 or (np.ptp(shift) < 1e-6 and (newer == 0 or shift[0] > 0))
            pairs += newer > 0
    assert pairs > 50


def category_share(t: pa.Table) -> np.ndarray:
    """The candidate's category's share of its request's sequence (0 for an empty one)."""
    seq = t["seq_category"]
    parent = pc.list_parent_indices(seq).to_numpy()
    cand = t["item_category"].to_numpy()
    hits = np.bincount(parent, weights=pc.list_flatten(seq).to_numpy() == cand[parent],
                       minlength=t.num_rows)
    return hits / np.maximum(pc.list_value_length(seq).to_numpy(), 1)


def test_sequence_effect_has_real_signal(seq_table: pa.Table, placebo_table: pa.Table) -> None:
    share = category_share(seq_table)
    r_on = np.corrcoef(share, logit(seq_table["true_p_click"].to_numpy()))[0, 1]
    # The long-term taste alone makes the share informative; the effect adds to it.
    r_off = np.corrcoef(share, logit(placebo_table["true_p_click"].to_numpy()))[0, 1]
    assert r_on > 0.5 and r_on > r_off + 0.15
    c = cols(seq_table)
    without_term = cols(placebo_table)  # the same logits less the sequence term
    for task, margin in (("click", 0.05), ("order", 0.01)):
        oracle = auc(c[f"true_p_{task}"], c[task])
        assert oracle > auc(without_term[f"true_p_{task}"], c[task]) + margin, task
    # The intercepts are re-solved: base rates keep their targets, the truths calibrated.
    assert 0.09 <= c["click"].mean() <= 0.11
    assert abs(c["true_p_click"].mean() / c["click"].mean() - 1) < 0.05
    assert 0.10 <= c["order"].sum() / c["click"].sum() <= 0.20
    # Stronger effect, stronger dependence.
    weak = cols(simulate_funnel(dataclasses.replace(ON, sequence_effect=0.3)))
    assert r_off + 0.05 < np.corrcoef(share, logit(weak["true_p_click"]))[0, 1] < r_on - 0.05


def test_sequence_max_len_truncates_to_the_most_recent(seq_table: pa.Table) -> None:
    short = simulate_funnel(dataclasses.replace(ON, sequence_max_len=5))
    assert pc.max(pc.list_value_length(short["seq_item_id"])).as_py() == 5
    for n in SEQ_COLUMNS:
        assert pc.list_slice(seq_table[n], 0, 5).combine_chunks().cast(short[n].type).equals(
            short[n].combine_chunks()), n


def test_write_funnel_writes_the_sequences(tmp_path: Path, seq_table: pa.Table) -> None:
    paths = write_funnel(tmp_path / "out", ON)
    parts = [pq.read_table(paths[n]) for n in ("train", "valid", "test")]
    for part in parts:
        assert part.num_rows > 0 and part.schema == seq_table.schema
    rejoined = pa.concat_tables(parts).sort_by([("request_id", "ascending"),
                                                ("position", "ascending")])
    assert rejoined.equals(seq_table)
    meta = json.loads(paths["simulation"].read_text())
    assert meta["config"]["sequence_effect"] == 1.0 and meta["config"]["sequence_max_len"] == 50


def test_cli_writes_sequences(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rankengine.cli import cli

    runner = CliRunner()
    for args, expected in ((["--sequence-effect", "0.5", "--sequence-max-len", "7"], True),
                           (["--write-sequences"], True), ([], False)):
        out = tmp_path / str(len(args))
        result = runner.invoke(cli, ["simulate", "--requests", "50", "-o", str(out), *args])
        assert result.exit_code == 0, result.output
        train = pq.read_table(out / "train.parquet")
        assert ("seq_item_id" in train.column_names) is expected, args
        meta = json.loads((out / "simulation.json").read_text())["config"]
        if args[:1] == ["--sequence-effect"]:
            assert meta["sequence_effect"] == 0.5 and meta["sequence_max_len"] == 7
            assert pc.max(pc.list_value_length(train["seq_time_gap"])).as_py() <= 7
