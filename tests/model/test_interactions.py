"""Behaviour sequences in the model: interactions trained, the context computed once per
request when served, the exported graph, and bad sequences named by column and row."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rankengine.artifact import load_artifact, save_artifact
from rankengine.backend import backend_class
from rankengine.bundle import ModelBundle
from rankengine.config import load_config
from rankengine.data.batching import ModelInput
from rankengine.errors import BadRequestError, ConfigError, DataError
from rankengine.export import export
from rankengine.scoring import PredictionModule
from rankengine.serve.holder import Served
from rankengine.serve.scoring import column, list_column, score
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

KINDS = ["din", "transformer", "dupn_lstm"]
SEQUENCE = ["seq_item_id", "seq_category", "seq_behaviour", "seq_time_gap"]


def config_text(data: Path, *, kind: str | None, extra: str = "",
                features: str = "") -> str:
    interaction = textwrap.dedent(f"""
    [[model.interactions]]
    name = "recent"
    kind = "{kind}"
    sequence = {SEQUENCE!r}
    target = ["item_id", "item_category"]
    {extra}
    """) if kind else ""
    return textwrap.dedent(f"""
[engine]
seed = 5

[data]
train = "{data / 'train.parquet'}"
valid = "{data / 'valid.parquet'}"
test = "{data / 'test.parquet'}"
group = "request_id"

[train]
epochs = 1
batch_size = 512
lr = 5e-3
progress = false

[model]
backbone = {{ kind = "shared_bottom", hidden = [32] }}
tower = {{ kind = "mlp", hidden = [16] }}
cascade = "esmm"

[tasks]
click = {{ label = "click" }}
order = {{ label = "order", after = "click" }}

[[features]]
name = "device"
kind = "categorical"
side = "context"
dim = 4

[[features]]
name = "item_id"
kind = "categorical"
dim = 8

[[features]]
name = "item_category"
kind = "categorical"
dim = 8

[[features]]
name = "seq_item_id"
kind = "sequence"
side = "context"
max_len = 8
null = "error"
limit = 50
share_with = "item_id"
dim = 8

[[features]]
name = "seq_category"
kind = "sequence"
side = "context"
max_len = 8
share_with = "item_category"
dim = 8

[[features]]
name = "seq_behaviour"
kind = "sequence"
side = "context"
max_len = 8
dim = 4

[[features]]
name = "seq_time_gap"
kind = "sequence_bucketize"
side = "context"
max_len = 8
boundaries = [1, 6, 24, 168]
dim = 4
{features}
{interaction}
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sequences")
    write_funnel(out, SimulationConfig(requests=1500, users=300, items=200, seed=4,
                                       sequence_effect=1.0, sequence_max_len=12))
    return out


def trained(tmp_path: Path, data: Path, kind: str | None, **kw: str) -> ModelBundle:
    path = tmp_path / "engine.toml"
    path.write_text(config_text(data, kind=kind, **kw))
    return load_artifact(save_artifact(train(load_config(path), progress=False),
                                       tmp_path / "artifact"))


@pytest.fixture(scope="module", params=KINDS)
def model(request: pytest.FixtureRequest, data: Path,
          tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    return trained(tmp_path_factory.mktemp(request.param), data, request.param)


def served(loaded: ModelBundle) -> Served:
    return Served("m", 1, loaded, backend_class(loaded.engine)(loaded), loaded)


def request_columns(data: Path, n: int, row: int = 0
                    ) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    rows = pq.read_table(data / "test.parquet").slice(row, n).to_pydict()
    context = {"device": column("device", [rows["device"][0]])}
    context |= {k: list_column(k, [rows[k][0]]) for k in SEQUENCE}
    items = {k: column(k, rows[k]) for k in ("item_id", "item_category")}
    return context, items


def test_each_interaction_trains_and_its_output_reaches_the_heads(model: ModelBundle) -> None:
    embedder = model.model.embedder
    assert "recent" in embedder.spans and embedder.output_dim == embedder.spans["recent"][1]
    # the sequence features are read by the interaction, not pooled
    assert not any(name in embedder.spans for name in SEQUENCE)
    auc = model.metrics["metrics"]["test"]["click"]["auc"]
    assert 0.5 < auc <= 1.0


def test_served_requests_encode_the_context_once(model: ModelBundle, data: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    interaction = model.model.embedder.interactions[0]
    seen: list[tuple[str, int]] = []
    hook = interaction.register_forward_pre_hook(
        lambda module, args: seen.append(("forward", int(args[1].shape[0]))))
    original = interaction.encode

    def encode(sequence: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seen.append(("encode", int(sequence.shape[0])))
        return original(sequence, mask)

    monkeypatch.setattr(interaction, "encode", encode)
    context, items = request_columns(data, 40)
    timings: dict[str, float] = {}
    once = score(served(model), context, items, 40, timings=timings)
    assert seen == [("encode", 1), ("forward", 40)]
    assert list(timings) == ["context", "candidates", "model"]
    # the same request with the context repeated per candidate scores the same
    repeated = {k: pa.concat_arrays([v] * 40) for k, v in context.items()}
    per_row = score(served(model), repeated, items, 40)
    hook.remove()
    assert seen[2:] == [("encode", 40), ("forward", 40)]
    np.testing.assert_allclose(once["score"], per_row["score"], rtol=1e-5, atol=1e-7)


def test_grouped_rows_read_their_own_context(model: ModelBundle, data: Path) -> None:
    rows = pq.read_table(data / "test.parquet").slice(0, 30)
    categorical, dense, sequences = model.pipeline.transform(rows)
    module = PredictionModule(model.model)
    with torch.inference_mode():
        full, _ = module.predict(ModelInput.from_numpy(categorical, dense, sequences))
        first = np.unique(rows["request_id"].to_numpy(), return_index=True)[1]
        context_rows = np.searchsorted(first, np.arange(30), side="right") - 1
        grouped = ModelInput.from_numpy(categorical, dense, [s[first] for s in sequences])
        grouped.context_rows = torch.from_numpy(context_rows)
        by_group, _ = module.predict(grouped)
    assert len(first) < 30  # several requests, each with several candidates
    np.testing.assert_allclose(by_group.numpy(), full.numpy(), rtol=1e-5, atol=1e-7)


def test_predict_reads_each_requests_context_once(model: ModelBundle, data: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from rankengine.predict import score_table

    rows = pq.read_table(data / "test.parquet").slice(0, 200)
    interaction = model.model.embedder.interactions[0]
    seen: list[int] = []
    original = interaction.encode

    def encode(sequence: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        seen.append(int(sequence.shape[0]))
        return original(sequence, mask)

    monkeypatch.setattr(interaction, "encode", encode)
    by_request = score_table(model, rows)
    assert seen == [len(set(rows["request_id"].to_pylist()))] and seen[0] < 200
    row_by_row = score_table(model, rows.drop_columns(["request_id"]))
    assert seen[1] == 200
    np.testing.assert_allclose(by_request["score"], row_by_row["score"], rtol=1e-5)
    # a group column whose rows differ in their sequences is read row by row, correctly
    same_group = rows.set_column(rows.schema.get_field_index("request_id"), "request_id",
                                 pa.array([0] * 200))
    np.testing.assert_allclose(score_table(model, same_group)["score"], row_by_row["score"],
                               rtol=1e-5)
    assert seen[2] == 200


def test_the_exported_graph_takes_one_context_row(model: ModelBundle, data: Path,
                                                  tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    rows = pq.read_table(data / "test.parquet").slice(0, 25)
    categorical, dense, sequences = model.pipeline.transform(rows)
    one = [s[:1] for s in sequences]  # the first request's context for all 25 rows
    path = export(model, tmp_path / "model.onnx", "onnx",
                  module=PredictionModule(model.model), output_names=("entire", "conditional"))
    reader = backend_class(model.engine, "onnxruntime")
    backend = reader(model)
    got, _ = backend(categorical, dense, one)
    with torch.inference_mode():
        want, _ = PredictionModule(model.model).predict(
            ModelInput.from_numpy(categorical, dense, one))
    np.testing.assert_allclose(got, want.double().numpy(), atol=1e-5)
    names = backend.input_names()
    outputs = reader.run_exported(path, dict(zip(names, [categorical, dense, *one],
                                                 strict=True)))
    np.testing.assert_allclose(outputs[0], want.numpy(), atol=1e-5)
    backend.close()


def test_bad_sequences_name_the_column_and_the_row(data: Path, tmp_path: Path) -> None:
    loaded = trained(tmp_path, data, "din")
    test = pq.read_table(data / "test.parquet")
    at = next(i for i, s in enumerate(test["seq_category"].to_pylist()) if len(s) > 1)
    context, items = request_columns(data, 5, at)
    short = test["seq_category"][at].as_py()[:-1]
    bad = context | {"seq_category": list_column("seq_category", [short])}
    with pytest.raises(BadRequestError, match=r"context: row 0: sequence 'recent' is "
                                              r"misaligned: column 'seq_category' has \d+ "
                                              r"elements, column 'seq_item_id' has \d+"):
        score(served(loaded), bad, items, 5)
    null = context | {"seq_item_id": pa.array([None], pa.list_(pa.int64()))}
    with pytest.raises(BadRequestError, match=r"feature 'seq_item_id' .*row 0: expected a "
                                              r"list .*found null"):
        score(served(loaded), null, items, 5)
    long = context | {k: list_column(k, [list(range(60))]) for k in SEQUENCE}
    with pytest.raises(BadRequestError, match=r"feature 'seq_item_id' .*row 0: 60 elements, "
                                              r"more than the limit of 50"):
        score(served(loaded), long, items, 5)
    with pytest.raises(BadRequestError, match=r"context.seq_item_id\[0\]\[1\]: expected a "
                                              r"string or a number, found null"):
        list_column("context.seq_item_id", [[1, None]])
    # in training: a misaligned row of the training file
    table = pq.read_table(data / "train.parquet")
    categories = table["seq_category"].to_pylist()
    row = next(i for i, c in enumerate(categories) if c)
    categories[row] = categories[row][1:]
    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(table.set_column(table.schema.get_field_index("seq_category"),
                                    "seq_category", pa.array(categories, pa.list_(pa.int64()))),
                   broken / "train.parquet")
    for split in ("valid", "test"):
        (broken / f"{split}.parquet").symlink_to(data / f"{split}.parquet")
    path = tmp_path / "broken.toml"
    path.write_text(config_text(broken, kind="din"))
    with pytest.raises(DataError, match=rf"row {row}: sequence 'recent' is misaligned: "
                                        rf"column 'seq_category' has"):
        train(load_config(path), progress=False)


@pytest.mark.parametrize(("change", "key", "message"), [
    ({"extra": 'sequence = ["seq_item_id", "device"]'}, r"model\.interactions\[0\]\.sequence",
     r"expected an id_list feature .*; found 'device'"),
    ({"extra": 'target = ["seq_item_id"]'}, r"model\.interactions\[0\]\.target",
     r"expected an ids feature .*; found 'seq_item_id'"),
    ({"extra": 'name = "device"'}, r"model\.interactions\[0\]\.name",
     r"name 'device' is already a feature"),
    ({"extra": "softmax = 3"}, r"model\.interactions\[0\]", r"softmax"),
    ({"features": '[[features]]\nname = "hist"\ncolumn = "seq_brand"\nkind = "sequence"\n'
                  'share_with = "seq_item_id"'}, r"features\[7\]\.share_with",
     r"expected an ids feature .*; found 'seq_item_id'"),
    ({"features": '[[features]]\nname = "hist"\ncolumn = "seq_brand"\nkind = "sequence"\n'
                  'share_with = "item_id"\ndim = 4'}, r"features\[7\]\.dim",
     r"a shared table has one embedding dim: 'item_id' has dim 8, 'hist' has dim 4"),
])
def test_interaction_config_errors_name_the_key(data: Path, tmp_path: Path,
                                                change: dict[str, str], key: str,
                                                message: str) -> None:
    text = config_text(data, kind="din", **change)
    if "sequence = " in change.get("extra", "") or "target = " in change.get("extra", "") \
            or "name = " in change.get("extra", ""):  # the override replaces the first key
        first = change["extra"].split(" = ")[0]
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{first} = ") and
                  i > lines.index("[[model.interactions]]"))
        del lines[at]
        text = "\n".join(lines)
    path = tmp_path / "engine.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key) as caught:
        train(load_config(path), progress=False)
    assert caught.match(message)


def test_max_len_must_agree_within_a_sequence(data: Path, tmp_path: Path) -> None:
    text = config_text(data, kind="din").replace(
        'name = "seq_behaviour"\nkind = "sequence"\nside = "context"\nmax_len = 8',
        'name = "seq_behaviour"\nkind = "sequence"\nside = "context"\nmax_len = 6')
    path = tmp_path / "engine.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"need one max_len; found \[6, 8\]"):
        train(load_config(path), progress=False)


def test_sequences_over_http_and_bad_ones_are_400s(data: Path, tmp_path: Path) -> None:
    from rankengine.registry import RegistryStore
    from rankengine.registry.artifacts import register
    from rankengine.serve import ModelHolder, ServeSettings, create_app

    from ..serve.conftest import Server, wait_ready

    path = tmp_path / "engine.toml"
    path.write_text(config_text(data, kind="din"))
    store = RegistryStore(f"sqlite:///{tmp_path / 'reg.db'}")
    register(store, tmp_path / "artifacts", train(load_config(path), progress=False), "seq")
    rows = pq.read_table(data / "test.parquet").to_pylist()
    row = next(r for r in rows if len(r["seq_item_id"]) > 2)
    context = {k: row[k] for k in ("device", *SEQUENCE)}
    candidates = [{"id": i, "item_id": r["item_id"], "item_category": r["item_category"]}
                  for i, r in enumerate(rows[:30])]
    try:
        with Server(create_app(ModelHolder(store, "seq/1"), ServeSettings())) as client:
            wait_ready(client)
            ok = client.post("/v1/rank", json={"context": context, "candidates": candidates})
            assert ok.status_code == 200 and len(ok.json()["ranked"]) == 30
            assert "context;dur=" in ok.headers["server-timing"]
            bad = {
                "misaligned": context | {"seq_category": row["seq_category"][:-1]},
                "too long": context | {k: [1] * 60 for k in SEQUENCE},
                "nested": context | {"seq_item_id": [[1], *row["seq_item_id"][1:]]},
                "null": context | {"seq_item_id": None},
            }
            answers = {name: client.post("/v1/rank", json={"context": c,
                                                          "candidates": candidates})
                       for name, c in bad.items()}
    finally:
        store.close()
    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(bad, 400)
    errors = {name: a.json()["error"] for name, a in answers.items()}
    assert "row 0: sequence 'recent' is misaligned: column 'seq_category'" in \
        errors["misaligned"]
    assert "feature 'seq_item_id'" in errors["too long"] and "limit of 50" in errors["too long"]
    assert errors["nested"].startswith("context.seq_item_id[0][0]: expected a string or a number")
    assert errors["null"].startswith("context.seq_item_id: expected a value, found null")
