"""Tests of the installed plugin, using rankengine's pytest fixtures (rankengine.testing)."""

from __future__ import annotations

import copy
import dataclasses
import gzip
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import torch
from rankengine_ranktools import (
    CheckedTorchBackend,
    GatedTransfer,
    JsonLinesSource,
    OutputCheckError,
    ndcg_at,
)

from rankengine import DataError, ModelBundle, NoParams, hookimpl
from rankengine.artifact import load_artifact, save_artifact
from rankengine.pluginmanager import Engine, discover_plugins
from rankengine.testing import make_engine, tiny_config_text, train_tiny

TASKS = ["click", "favorite", "order", "pay", "dwell"]
ENABLED = ["builtin", "ranktools"]


def model_table(cascade: str) -> str:
    return ('[model]\nbackbone = { kind = "mmoe", experts = 2, expert_hidden = [16] }\n'
            f'tower = {{ kind = "mlp", hidden = [8] }}\ncascade = {cascade}\n')


@pytest.fixture
def engine(rankengine_engine: Callable[..., Engine]) -> Engine:
    return rankengine_engine(enabled=ENABLED)


def fusion(engine: Engine, kind: str, **params: object) -> Callable[[torch.Tensor], torch.Tensor]:
    component = engine.components.fusions.get(kind)
    built: Callable[[torch.Tensor], torch.Tensor] = component.factory(
        TASKS, component.parse_params(params))
    return built


def test_the_plugin_is_installed_through_its_entry_point(engine: Engine) -> None:
    info = discover_plugins()["ranktools"]
    assert (info.distribution, info.origin) == ("rankengine-ranktools", "third-party")
    assert engine.plugins["ranktools"].hooks == [
        "rankengine_register_backends", "rankengine_register_cascades",
        "rankengine_register_fusions", "rankengine_register_metrics",
        "rankengine_register_sources"]
    components = engine.components
    assert components.fusions.get("smoothed_product").plugin == "ranktools"
    assert {"ndcg_5", "ndcg_10"} <= set(components.metrics.names())
    assert components.cascades.get("gated_transfer").plugin == "ranktools"
    assert components.sources.get("jsonl").factory is JsonLinesSource
    assert components.backends.get("torch_checked").factory is CheckedTorchBackend
    # None of them displaces a built-in default.
    assert (components.cascades.default().name, components.backends.default().name) == (
        "esmm", "torch")


# -- smoothed_product ------------------------------------------------------------------------


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


# -- ndcg_k ----------------------------------------------------------------------------------


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
        plugins=ENABLED,
        fusion='kind = "smoothed_product"\nweights = { click = 1.0, pay = 1.0 }\nalpha = 0.05',
        extra='[evaluate]\nmetrics = ["auc", "ndcg_10"]')
    trained = train_tiny(config)
    valid = trained.training.metrics["valid"]
    assert 0.0 < valid["click"]["ndcg_10"] <= 1.0
    assert "gauc" not in valid["click"]


# -- gated_transfer --------------------------------------------------------------------------


class CascadeSnapshot:
    """An in-process plugin keeping the cascade's parameters as they were before training."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}

    @hookimpl
    def rankengine_before_train(self, context: Any) -> None:
        self.before = {name: value.detach().clone()
                       for name, value in context.model.cascade.state_dict().items()}


@dataclass
class Gated:
    """A gated_transfer model: trained, its cascade before training, saved and loaded back."""

    trained: ModelBundle
    before: dict[str, torch.Tensor]
    loaded: ModelBundle
    engine: Engine
    test: pa.Table  # the raw test split


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, rankengine_dataset: Path) -> Gated:
    root = tmp_path_factory.mktemp("gated")
    config = root / "engine.toml"
    config.write_text(tiny_config_text(rankengine_dataset, plugins=ENABLED, model=model_table(
        '{ kind = "gated_transfer", gate_bias = -1.0 }')))
    snapshot = CascadeSnapshot()
    engine = make_engine(snapshot, enabled=ENABLED)
    trained = train_tiny(config, engine=engine)
    loaded = load_artifact(save_artifact(trained, root / "model"), engine=engine)
    return Gated(trained, snapshot.before, loaded, engine,
                 pq.read_table(rankengine_dataset / "test.parquet"))


def encoded(loaded: ModelBundle, table: pa.Table) -> tuple[np.ndarray, np.ndarray,
                                                            list[np.ndarray]]:
    """The model arrays a serving back end receives for these raw rows."""
    return loaded.pipeline.transform(table)


def test_gated_transfer_parameters_are_built_and_trained(gated: Gated) -> None:
    cascade = gated.trained.model.cascade
    # One transfer and one gate per parent → child edge: favorite, order, pay and dwell.
    assert sorted({name.split(".")[0] for name in gated.before}) == ["gate", "transfer"]
    assert len([n for n in gated.before if n.endswith(".weight")]) == 2 * 4
    assert all(torch.equal(v, torch.full_like(v, -1.0))
               for n, v in gated.before.items() if n.startswith("gate.") and n.endswith("bias"))
    after = cascade.state_dict()
    assert after.keys() == gated.before.keys()
    unchanged = [n for n, v in after.items() if torch.equal(v, gated.before[n])]
    assert unchanged == []  # the trainer optimised every cascade parameter
    # ... and they are part of the model the trainer saved
    assert {f"cascade.{n}" for n in after} <= set(gated.trained.model.state_dict())


def test_gated_transfer_is_saved_and_loaded_back(gated: Gated) -> None:
    saved, loaded = gated.trained.model.cascade.state_dict(), gated.loaded.model.cascade
    assert loaded.state_dict().keys() == saved.keys()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert gated.loaded.config.model.cascade.kind == "gated_transfer"
    assert gated.loaded.config.model.cascade.params == {"gate_bias": -1.0}
    assert loaded.params.gate_bias == -1.0


def test_gated_transfer_never_puts_a_child_above_its_parent(gated: Gated) -> None:
    model = gated.trained.model
    cascade, towers = copy.deepcopy(model.cascade), copy.deepcopy(list(model.towers))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # any parameters: large, random, gates wide open or shut
        for p in itertools.chain(cascade.parameters(), *(t.parameters() for t in towers)):
            p.copy_(torch.randn(p.shape, generator=generator) * 6)
    inputs = [torch.randn(512, model.backbone.output_dim, generator=generator) * 8
              for _ in TASKS]
    out = cascade(inputs, towers)
    graph = model.graph
    for child, parent in enumerate(graph.parent_index):
        if parent < 0 or graph.nodes[child].type != "binary":
            continue
        assert bool((out.log_p[:, child] <= out.log_p[:, parent]).all()), TASKS[child]
    binary = [i for i, n in enumerate(graph.nodes) if n.type == "binary"]
    total = (out.log_p.exp() + out.log_q.exp())[:, binary]
    torch.testing.assert_close(total, torch.ones_like(total))  # p + (1 - p) = 1
    assert bool(torch.isfinite(out.log_p).all() and torch.isfinite(out.log_q).all())


def test_gated_transfer_composes_like_esmm_and_its_transfer_matters(gated: Gated) -> None:
    model = gated.trained.model
    graph, engine = model.graph, gated.engine
    component = engine.components.cascades.get("esmm")
    esmm = component.factory(graph, component.parse_params({}))
    generator = torch.Generator().manual_seed(4)
    logits = [torch.randn(64, generator=generator) * 4 for _ in TASKS]
    ours, theirs = model.cascade.compose(logits), esmm.compose(logits)
    for field in ("log_p", "log_q", "cond_log_p", "cond_log_q", "value"):
        torch.testing.assert_close(getattr(ours, field), getattr(theirs, field))

    towers = list(model.towers)
    inputs = [torch.randn(64, model.backbone.output_dim, generator=generator) for _ in TASKS]
    with torch.no_grad():
        learned = model.cascade(inputs, towers).log_p
        plain = esmm(inputs, towers).log_p
        assert not torch.allclose(learned, plain)  # the learned transfer changes predictions
        shut = copy.deepcopy(model.cascade)
        assert isinstance(shut, GatedTransfer)
        for gate in shut.gate:
            assert isinstance(gate, torch.nn.Linear)
            gate.bias.fill_(-1e4)  # sigmoid(-1e4) == 0: nothing is transferred
        torch.testing.assert_close(shut(inputs, towers).log_p, plain)
        assert torch.equal(learned[:, 0], plain[:, 0])  # click has no parent: untouched


def test_the_cascade_is_exported_to_onnx(gated: Gated, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # torch's ONNX exporter
    backend = CheckedTorchBackend(gated.loaded)
    path = backend.export_predictions(tmp_path / "model.onnx", "onnx")
    weights = {i.name for i in onnx.load(str(path)).graph.initializer}
    assert any("cascade.gate" in n for n in weights) and \
        any("cascade.transfer" in n for n in weights), sorted(weights)
    arrays = encoded(gated.loaded, gated.test.slice(0, 50))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, dict(zip(backend.input_names(), [arrays[0], arrays[1], *arrays[2]],
                                     strict=True)))
    want = backend.predict(*arrays)
    for exported, served in zip(got, want, strict=True):
        np.testing.assert_allclose(exported, served, rtol=1e-5, atol=1e-6)  # float32


# -- jsonl -----------------------------------------------------------------------------------


def write_jsonl(table: pa.Table, path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    return path


def jsonl(path: Path) -> JsonLinesSource:
    source = JsonLinesSource(path, NoParams())
    source.name = "jsonl"
    return source


def csv_source(engine: Engine, path: Path) -> Any:
    component = engine.components.sources.get("csv")
    source = component.factory(path, component.parse_params({}))
    source.name = "csv"
    return source


def test_jsonl_reads_what_csv_reads(engine: Engine, rankengine_dataset: Path,
                                    tmp_path: Path) -> None:
    table = pq.read_table(rankengine_dataset / "valid.parquet")
    # CSV has no lists: both files get the history as "4|17|4", the way CSV logs carry it.
    history = pa.array(["|".join(map(str, h)) or "-" for h in  # "" would be a CSV null
                        table.column("user_hist_categories").to_pylist()])
    table = table.set_column(table.schema.get_field_index("user_hist_categories"),
                             "user_hist_categories", history)
    pa_csv.write_csv(table, tmp_path / "valid.csv")
    ours, theirs = jsonl(write_jsonl(table, tmp_path / "valid.jsonl")), \
        csv_source(engine, tmp_path / "valid.csv")
    assert ours.schema() == theirs.schema()
    assert ours.read().equals(theirs.read())
    assert ours.num_rows() == theirs.num_rows() == table.num_rows
    columns = ["item_price", "device", "click"]
    assert ours.read(columns).equals(theirs.read(columns))
    assert ours.read(columns).column_names == columns
    assert ours.take([0, 7, 1200], columns).equals(theirs.take([0, 7, 1200], columns))
    batches = list(ours.batches(columns, batch_rows=500))
    assert [b.num_rows for b in batches] == [500, 500, 500]
    assert pa.Table.from_batches(batches).equals(theirs.read(columns))


def test_jsonl_keeps_lists_and_reads_directories_of_shards(rankengine_dataset: Path,
                                                           tmp_path: Path) -> None:
    table = pq.read_table(rankengine_dataset / "test.parquet")
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(table.slice(0, 700), shards / "part-0.jsonl")
    with gzip.open(shards / "part-1.jsonl.gz", "wt") as fh:  # compressed shards work too
        fh.writelines(json.dumps(row) + "\n" for row in table.slice(700).to_pylist())
    (shards / "README.txt").write_text("not a shard")
    read = jsonl(shards).read()
    # The same rows and values as the Parquet file, lists included (CSV cannot hold them).
    assert read.cast(table.schema).equals(table)
    assert pa.types.is_list(read.schema.field("user_hist_categories").type)

    write_jsonl(table.slice(0, 5).drop_columns(["pay"]), shards / "part-2.jsonl")
    with pytest.raises(DataError) as error:
        jsonl(shards).read()
    assert str(error.value) == (f"{shards}: shard part-2.jsonl has no column 'pay' but shard "
                                f"part-0.jsonl has; every shard must hold the same columns")


@pytest.mark.parametrize(("lines", "message"), [
    ('{"click": 1, "device": "ios"}\n\n{"click": 0, "device": "ios" "hour": 3}\n',
     r"line 3: expected a JSON object, found invalid JSON \(character 30: Expecting ',' "
     r"delimiter\): \{\"click\": 0, \"device\": \"ios\" \"hour\": 3\}$"),
    ('{"click": 1, "hour": 21}\n{"click": 0, "hour": "21"}\n',
     r"line 2, column 'hour': expected a number \(as on line 1\), found a string: \"21\"$"),
    ('{"click": 1, "price": 2.5}\n[1, 2]\n',
     r"line 2: expected a JSON object, found an array: \[1, 2\]$"),
    ('{"click": 1}\n{"click": 0, "device": "io',  # a writer killed mid-line
     r"line 2: expected a JSON object, found invalid JSON \(character 24: Unterminated "
     r"string starting at\): \{\"click\": 0, \"device\": \"io$"),
    ('{"tags": ["a"]}\n{"tags": [1]}\n',
     r"line 2, column 'tags\[\]': expected a string \(as on line 1\), found a number: 1$"),
    ('', r"the file is empty: expected one JSON object per line, found no line$"),
])
def test_a_malformed_file_is_one_error_naming_file_line_and_column(
        tmp_path: Path, lines: str, message: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(lines)
    with pytest.raises(DataError, match=f"^{re.escape(str(path))}: " + message) as error:
        jsonl(path).schema()
    assert "\n" not in str(error.value)


def test_jsonl_errors_name_bad_bytes_and_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"device": "ios"}\n{"device": "\xff"}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: line 2: expected UTF-8 "
                                        r"text, found byte b'\\xff' at offset 12$"):
        jsonl(path).read()
    path.write_text('{"click": 1, "device": "ios"}\n')
    with pytest.raises(DataError, match=r"column 'devic' is required by the configuration but "
                                        r"the data has no such column; did you mean 'device'"):
        jsonl(path).read(["click", "devic"])


def test_training_from_jsonl_matches_training_from_parquet(rankengine_dataset: Path,
                                                           tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        write_jsonl(pq.read_table(rankengine_dataset / f"{split}.parquet"),
                    tmp_path / f"{split}.json")  # not a .jsonl name: [data] format picks it
    results = {}
    for name, data in (("parquet", rankengine_dataset), ("jsonl", tmp_path)):
        text = tiny_config_text(data, plugins=ENABLED)
        if name == "jsonl":
            text = text.replace(".parquet", ".json").replace(
                'group = "request_id"', 'group = "request_id"\nformat = "jsonl"')
        config = tmp_path / f"{name}.toml"
        config.write_text(text)
        trained = train_tiny(config)
        results[name] = trained.training
    jsonl_result, parquet_result = results["jsonl"], results["parquet"]
    assert jsonl_result.data_sources != parquet_result.data_sources
    assert jsonl_result.rows == parquet_result.rows
    # the same rows, types and values: the same model and metrics (undefined ones included)
    assert json.dumps(jsonl_result.metrics, sort_keys=True, default=str) == \
        json.dumps(parquet_result.metrics, sort_keys=True, default=str)


# -- torch_checked ---------------------------------------------------------------------------


def test_torch_checked_serves_what_torch_serves(gated: Gated) -> None:
    arrays = encoded(gated.loaded, gated.test.slice(0, 200))
    torch_backend = gated.engine.components.backends.get("torch").factory(gated.loaded)
    ours = CheckedTorchBackend(gated.loaded, threads=1)
    assert ours.counts() == {"requests": 0, "rows": 0, "refused": 0}
    for got, want in zip(ours(*arrays), torch_backend(*arrays), strict=True):
        np.testing.assert_array_equal(got, want)
    ours(*encoded(gated.loaded, gated.test.slice(200, 30)))
    assert ours.counts() == {"requests": 2, "rows": 230, "refused": 0}


def test_torch_checked_refuses_answers_that_break_the_graph(
        gated: Gated, rankengine_dataset: Path, tmp_path: Path) -> None:
    arrays = encoded(gated.loaded, gated.test.slice(0, 20))
    # An independent cascade on the entire space does not keep p(order) <= p(click): push
    # order's head up and the check catches it ...
    config = tmp_path / "independent.toml"
    config.write_text(tiny_config_text(rankengine_dataset, plugins=ENABLED, model=model_table(
        '{ kind = "independent", space = "entire" }')))
    independent = load_artifact(save_artifact(train_tiny(config), tmp_path / "independent"))
    order = TASKS.index("order")
    ours = dataclasses.replace(gated.loaded, model=copy.deepcopy(gated.loaded.model))
    for loaded in (independent, ours):
        with torch.no_grad():
            list(loaded.model.towers[order].parameters())[-1].fill_(30.0)  # last bias
    backend = CheckedTorchBackend(independent)
    with pytest.raises(OutputCheckError, match=r"^torch_checked: model .*independent: task "
                                               r"'order' row 0: expected p\(order\) <= "
                                               r"p\(click\) = 0\.\d+, found 1$"):
        backend.predict(*arrays)
    assert backend.counts() == {"requests": 1, "rows": 20, "refused": 1}
    # ... while gated_transfer keeps the order below click by construction.
    entire, _ = CheckedTorchBackend(ours).predict(*arrays)
    np.testing.assert_allclose(entire[:, order], entire[:, 0], rtol=1e-6)

    damaged = dataclasses.replace(gated.loaded, model=copy.deepcopy(gated.loaded.model))
    with torch.no_grad():
        first_weight = next(iter(damaged.model.towers[TASKS.index("pay")].parameters()))
        first_weight[0, 0] = float("nan")
    with pytest.raises(OutputCheckError, match=r"task 'pay' row 0: expected a finite "
                                               r"entire-space prediction, found nan$"):
        CheckedTorchBackend(damaged).predict(*arrays)


def test_torch_checked_reports_its_counts_when_closed(
        gated: Gated, capsys: pytest.CaptureFixture[str]) -> None:
    backend = CheckedTorchBackend(gated.loaded)
    backend.predict(*encoded(gated.loaded, gated.test.slice(0, 3)))
    backend.close()
    assert capsys.readouterr().err == (f"torch_checked: model {gated.loaded.path}: 1 "
                                       f"request(s), 3 row(s) checked, 0 refused\n")
