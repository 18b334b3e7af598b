"""End-to-end training on a small simulated funnel: real data, real torch, real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rankengine.artifact import load_artifact, save_artifact
from rankengine.config import load_config
from rankengine.data.batching import TensorData, iterate_batches
from rankengine.data.dataset import encode_table
from rankengine.errors import ArtifactError, DataError, GraphError
from rankengine.predict import score_table
from rankengine.train import train

from .conftest import tiny_config_text


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, funnel_dir: Path):
    path = tmp_path_factory.mktemp("cfg") / "engine.toml"
    path.write_text(tiny_config_text(funnel_dir))
    return train(load_config(path), progress=False)


def test_training_learns_and_reports_graph_metrics(trained) -> None:
    result = trained.result
    test = result.metrics["test"]
    assert set(test) == {"click", "favorite", "order", "pay", "dwell"}
    assert test["click"]["auc"] > 0.55  # above chance after two epochs on 24k rows
    for task in ("favorite", "order", "pay"):
        assert {"auc", "auc_cond", "gauc", "logloss", "calibration"} <= set(test[task])
    assert "oracle_auc" in test["click"] and "auc_cond_entire" in test["order"]
    assert "rmse" in test["dwell"] and "auc" not in test["dwell"]
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"]["click"] < first["train_loss"]["click"]
    assert last["loss_weights"]["dwell"] == pytest.approx(0.1)  # the task's `weight`
    assert result.samples_per_second > 0


def test_gate_statistics_say_which_experts_each_task_uses(trained) -> None:
    stats = trained.result.gate_stats
    assert set(stats) == {"click", "favorite", "order", "pay", "dwell"}
    for entry in stats.values():
        assert entry["experts"] == ["expert_0", "expert_1"]  # the tiny MMoE has 2 experts
        assert sum(entry["weights"]) == pytest.approx(1.0, abs=1e-6)
    # Recomputed by hand on the validation rows: the click head's mean gate.
    model = trained.model.eval()
    head = next(i for i, h in enumerate(model.cascade.heads()) if h.node == "click")
    valid = pq.read_table(trained.config.data.valid)
    data = TensorData(encode_table(valid, trained.pipeline, trained.graph,
                                   policy=trained.config.data.inconsistent))
    total, rows = torch.zeros(2, dtype=torch.float64), 0
    with torch.inference_mode():
        for batch in iterate_batches(data, 4096, shuffle=False):
            model(batch.inputs)
            total += model.backbone.gate_weights()[1][:, head].double().sum(0)
            rows += len(batch)
    assert stats["click"]["weights"] == pytest.approx((total / rows).tolist(), abs=1e-6)


def test_same_seed_same_model(funnel_dir: Path, tmp_path: Path, trained) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(tiny_config_text(funnel_dir))
    again = train(load_config(path), progress=False)
    for (name, a), b in zip(trained.model.state_dict().items(),
                            again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert again.result.metrics == trained.result.metrics


def test_artifact_round_trip_gives_identical_predictions(trained, tmp_path: Path,
                                                         funnel_dir: Path) -> None:
    path = save_artifact(trained, tmp_path / "model")
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "pipeline.json", "config.json", "tasks.json", "metrics.json",
            "manifest.json"} <= names
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["plugins"]["cascades"] == "0.1.0"
    loaded = load_artifact(path)
    table = pq.read_table(funnel_dir / "test.parquet")
    scores = score_table(loaded, table)
    # Predictions from the in-memory model and from the artifact agree exactly.
    from rankengine.data.batching import TensorData
    from rankengine.data.dataset import encode_table
    from rankengine.scoring import predict_arrays

    data = encode_table(table, trained.pipeline, trained.graph, policy="error")
    entire, _ = predict_arrays(trained.model, TensorData(data), 4096)
    for i, name in enumerate(trained.graph.names):
        np.testing.assert_array_equal(scores[f"p_{name}"], entire[:, i])
    expected = np.prod(np.clip(entire[:, [0, 2]], 1e-12, None), axis=1)
    np.testing.assert_allclose(scores["score"], expected, rtol=1e-5)


def test_existing_artifact_is_not_overwritten_without_flag(trained, tmp_path: Path) -> None:
    save_artifact(trained, tmp_path / "m")
    with pytest.raises(ArtifactError, match="already exists"):
        save_artifact(trained, tmp_path / "m")
    save_artifact(trained, tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_tampered_artifact_is_refused(trained, tmp_path: Path) -> None:
    path = save_artifact(trained, tmp_path / "m")
    blob = bytearray((path / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_artifact(path)


def test_six_node_chain_trains_like_two(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 4000
    x = rng.integers(0, 20, n)
    levels = [rng.random(n) < 0.3 + 0.02 * x]
    for _ in range(5):
        levels.append(levels[-1] & (rng.random(n) < 0.6))
    table = pa.table({"x": x, **{f"y{i}": lv.astype(np.int64) for i, lv in enumerate(levels)}})
    pq.write_table(table, tmp_path / "chain.parquet")
    tasks = "\n".join(
        f'y{i} = {{ label = "y{i}"' + (f', after = "y{i - 1}"' if i else "") + " }"
        for i in range(6))
    (tmp_path / "engine.toml").write_text(f"""
[data]
train = "chain.parquet"
[train]
epochs = 2
progress = false
[model]
backbone = {{ kind = "ple", levels = 2 }}
[[features]]
name = "x"
kind = "categorical"
[tasks]
{tasks}
""")
    trained = train(load_config(tmp_path / "engine.toml"), progress=False)
    valid = trained.result.metrics["valid"]
    assert list(valid) == [f"y{i}" for i in range(6)]
    assert all(np.isfinite(valid[f"y{i}"]["logloss"]) for i in range(6))
    assert valid["y0"]["auc"] > 0.55 and "auc_cond" in valid["y5"]


def test_cycle_in_config_names_the_file(tmp_path: Path, funnel_dir: Path) -> None:
    tasks = """
[tasks]
click = { label = "click", after = "pay" }
pay = { label = "pay", after = "click" }
"""
    (tmp_path / "engine.toml").write_text(tiny_config_text(funnel_dir, tasks=tasks))
    with pytest.raises(GraphError, match=r"engine\.toml: \[tasks\] the task graph has a cycle"):
        train(load_config(tmp_path / "engine.toml"), progress=False)


def test_missing_label_column_in_csv(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("user,clicks\n1,0\n2,1\n")
    (tmp_path / "engine.toml").write_text("""
[data]
train = "train.csv"
[[features]]
name = "user"
kind = "categorical"
[tasks]
click = { label = "click" }
""")
    with pytest.raises(DataError) as info:
        train(load_config(tmp_path / "engine.toml"), progress=False)
    message = str(info.value)
    assert "train.csv" in message and "column 'click'" in message
    assert "did you mean 'clicks'?" in message


def test_numeric_column_of_strings_in_csv(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("price,click\n1.5,0\n2.0,1\nfree,0\n3,1\n")
    (tmp_path / "engine.toml").write_text("""
[data]
train = "train.csv"
valid_fraction = 0.25
[[features]]
name = "price"
kind = "numeric"
[tasks]
click = { label = "click" }
""")
    with pytest.raises(DataError) as info:
        train(load_config(tmp_path / "engine.toml"), progress=False)
    message = str(info.value)
    assert "train.csv" in message and "feature 'price'" in message
    assert "'free'" in message


def test_inconsistent_policy_applies_to_training(tmp_path: Path, funnel_dir: Path) -> None:
    from rankengine.simulate import SimulationConfig, write_funnel

    dirty = tmp_path / "dirty"
    write_funnel(dirty, SimulationConfig(requests=800, users=100, items=80,
                                         inconsistent_rate=0.02, seed=5))
    text = tiny_config_text(dirty)
    (tmp_path / "engine.toml").write_text(text)
    with pytest.raises(DataError, match=r"set while its parent .* is 0"):
        train(load_config(tmp_path / "engine.toml"), progress=False)
    dropping = text.replace('group = "request_id"', 'group = "request_id"\ninconsistent = "drop"')
    (tmp_path / "engine.toml").write_text(dropping)
    trained = train(load_config(tmp_path / "engine.toml"), progress=False)
    report = trained.result.label_reports["train"]
    assert report["rows_dropped"] > 0 and sum(report["inconsistent"].values()) >= \
        report["rows_dropped"]


def test_feature_groups_route_features_to_backbone_and_towers(tmp_path: Path,
                                                              funnel_dir: Path) -> None:
    text = tiny_config_text(funnel_dir, model="""
[model]
backbone = { kind = "shared_bottom", hidden = [16] }
tower = { kind = "mlp", hidden = [8] }
cascade = "esmm"
backbone_groups = ["default"]
""")
    # The price goes only to the order tower (a private group), not through the backbone.
    text = text.replace('name = "item_price"\nkind = "numeric"',
                        'name = "item_price"\nkind = "numeric"\ngroups = ["price"]')
    text = text.replace('label_cond = "cf_order" }',
                        'label_cond = "cf_order" }\ntower_groups = ["price"]')
    (tmp_path / "engine.toml").write_text(text)
    trained = train(load_config(tmp_path / "engine.toml"), progress=False)
    model = trained.model
    price_width = 1
    assert model.select_backbone
    assert len(model.backbone_columns) == model.embedder.output_dim - price_width
    order = trained.graph.index("order")
    first = model.towers[order].net[0]
    assert first.in_features == model.backbone.output_dim + price_width
    assert model.towers[0].net[0].in_features == model.backbone.output_dim
    bad = text.replace('tower_groups = ["price"]', 'tower_groups = ["prize"]')
    (tmp_path / "engine.toml").write_text(bad)
    from rankengine.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[tasks\.order\.tower_groups\].*'prize'"):
        train(load_config(tmp_path / "engine.toml"), progress=False)


def test_ali_ccp_sample_trains_with_the_ctr_cvr_template(tmp_path: Path) -> None:
    from .conftest import REPO

    trained = train(load_config(REPO / "examples/ali-ccp/engine.toml"), progress=False)
    assert trained.graph.names == ["click", "purchase"]
    assert trained.graph.node("purchase").parent == "click"
    path = save_artifact(trained, tmp_path / "ali")
    assert load_artifact(path).graph.names == ["click", "purchase"]


def test_encoded_cache_skips_reading_and_gives_the_same_model(tmp_path: Path,
                                                              funnel_dir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.parquet").write_bytes((funnel_dir / f"{split}.parquet").read_bytes())
    text = tiny_config_text(data).replace("[train]\nepochs = 2", "[train]\nepochs = 1")
    text = text.replace('group = "request_id"', 'group = "request_id"\ncache_dir = "cache"')
    (tmp_path / "engine.toml").write_text(text)
    logs: list[str] = []
    first = train(load_config(tmp_path / "engine.toml"), progress=False, log=logs.append)
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    second = train(load_config(tmp_path / "engine.toml"), progress=False, log=logs.append)
    assert any("from cache" in line for line in logs)
    assert second.result.metrics == first.result.metrics
    assert second.pipeline.state() == first.pipeline.state()
    # A changed data file is a different cache entry.
    table = pq.read_table(data / "train.parquet")
    pq.write_table(table.slice(0, table.num_rows - 10), data / "train.parquet")
    logs.clear()
    train(load_config(tmp_path / "engine.toml"), progress=False, log=logs.append)
    assert not any("from cache" in line for line in logs)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_diverging_training_stops_with_a_clear_error(tmp_path: Path, funnel_dir: Path) -> None:
    from rankengine.errors import TrainingError

    text = tiny_config_text(funnel_dir).replace("lr = 0.003", "lr = 1e30")
    (tmp_path / "engine.toml").write_text(text)
    with pytest.raises(TrainingError, match=r"epoch 1, step \d+: loss became (nan|inf)"):
        train(load_config(tmp_path / "engine.toml"), progress=False)


def test_missing_data_file_and_unknown_plugin_name_the_config_key(tmp_path: Path) -> None:
    from rankengine.errors import ConfigError

    (tmp_path / "engine.toml").write_text("""
[engine]
plugins = ["builtin"]
[data]
train = "nowhere/train.parquet"
[[features]]
name = "x"
kind = "categorical"
[tasks]
click = { label = "click" }
""")
    with pytest.raises(ConfigError, match=r"engine\.toml: \[data\.train\]: data file or "
                                          r"directory not found: .*nowhere/train\.parquet"):
        train(load_config(tmp_path / "engine.toml"), progress=False)
    text = (tmp_path / "engine.toml").read_text().replace('["builtin"]', '["builtin", "casades"]')
    (tmp_path / "engine.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"\[engine\.plugins\]: plugin 'casades' is not "
                                          r"installed.*did you mean 'cascades'"):
        train(load_config(tmp_path / "engine.toml"), progress=False)


def test_early_stopping_does_not_judge_an_epoch_whose_metric_is_undefined(
        tmp_path: Path, funnel_dir: Path, engine) -> None:
    from rankengine.evaluate import select_metrics
    from rankengine.plan import build_graph
    from rankengine.train import EarlyStopper

    text = tiny_config_text(funnel_dir).replace(
        "progress = false", "progress = false\nearly_stopping = { metric = \"auc:order\", "
                            "patience = 1 }")
    (tmp_path / "engine.toml").write_text(text)
    config = load_config(tmp_path / "engine.toml")
    stopper = EarlyStopper(config, build_graph(config, engine),
                           select_metrics(engine.components.metrics, None))
    loss = {"total": 1.0}
    undefined = {"order": {"auc": float("nan"), "undefined": {"auc": "no positive labels"}}}
    # Nothing defined yet: the latest epoch is kept (as without early stopping), no stop.
    assert stopper.update(1, loss, undefined) == (True, False)
    assert stopper.undefined(loss, undefined) == "no positive labels"
    assert stopper.update(2, loss, {"order": {"auc": 0.7}}) == (True, False)
    # Undefined after a defined epoch: not an improvement, and no patience used up.
    assert stopper.update(3, loss, undefined) == (False, False)
    assert stopper.update(4, loss, {"order": {"auc": None}}) == (False, False)
    assert stopper.update(5, loss, {"order": {"auc": 0.6}}) == (False, True)
    assert stopper.undefined(loss, {"order": {"auc": 0.6}}) is None


def test_early_stopping_on_a_weighted_combination_counts_each_metric_in_its_direction(
        tmp_path: Path, funnel_dir: Path, engine) -> None:
    from rankengine.errors import ConfigError
    from rankengine.evaluate import select_metrics
    from rankengine.plan import build_graph
    from rankengine.train import EarlyStopper

    def stopper(early: str) -> EarlyStopper:
        text = tiny_config_text(funnel_dir).replace(
            "progress = false", f"progress = false\nearly_stopping = {early}")
        (tmp_path / "engine.toml").write_text(text)
        config = load_config(tmp_path / "engine.toml")
        return EarlyStopper(config, build_graph(config, engine),
                            select_metrics(engine.components.metrics, None))

    combined = stopper('{ metric = "combined", patience = 1, weights = { "auc:click" = 1.0, '
                       '"calibration:order" = 2.0, "logloss:pay" = 0.5 } }')
    metrics = {"click": {"auc": 0.8}, "order": {"calibration": 1.1}, "pay": {"logloss": 0.04}}
    # higher AUC is better, calibration closest to 1, lower logloss: all as "badness"
    assert combined.value({}, metrics) == pytest.approx(-0.8 + 2.0 * 0.1 + 0.5 * 0.04)
    assert combined.update(1, {}, metrics) == (True, False)
    better_calibrated = {**metrics, "order": {"calibration": 0.97}}
    assert combined.update(2, {}, better_calibrated) == (True, False)
    assert combined.update(3, {}, metrics) == (False, True)
    missing = {**metrics, "pay": {"logloss": float("nan"), "undefined": {"logloss": "no rows"}}}
    assert combined.undefined({}, missing) == "logloss:pay: no rows"
    for early, why in (
            ('{ metric = "combined" }', r"\[train\.early_stopping\.weights\]: metric = "
                                       r"\"combined\" needs weights"),
            ('{ metric = "auc:click", weights = { "auc:order" = 1.0 } }',
             r"weights are for metric = \"combined\""),
            ('{ metric = "combined", weights = { "auc:nope" = 1.0 } }',
             r"\[train\.early_stopping\.weights\]: task 'nope' is not in the graph"),
            ('{ metric = "combined", weights = { "auc:click" = 0.0 } }', r"must be a number > 0")):
        with pytest.raises(ConfigError, match=why):
            stopper(early)


def test_lr_schedules_warm_up_then_decay_to_zero(tmp_path: Path, funnel_dir: Path) -> None:
    from rankengine.train.loop import lr_factor

    def config(schedule: str, warmup: int):  # type: ignore[no-untyped-def]
        text = tiny_config_text(funnel_dir).replace(
            "progress = false", f'progress = false\nlr_schedule = "{schedule}"\n'
                                f"warmup_steps = {warmup}")
        (tmp_path / "engine.toml").write_text(text)
        return load_config(tmp_path / "engine.toml")

    assert lr_factor(config("constant", 0), 5, 100) is None  # the optimiser's lr untouched
    cosine = config("cosine", 10)
    assert [lr_factor(cosine, s, 110) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(cosine, 60, 110) == pytest.approx(0.5)  # half way through the decay
    assert lr_factor(cosine, 110, 110) == pytest.approx(0.0)
    linear = config("linear", 0)
    assert lr_factor(linear, 25, 100) == pytest.approx(0.75)
    # A real run: the recorded lr falls epoch by epoch to near 0 at the end.
    trained = train(config("linear", 4), progress=False)
    lrs = [record["lr"] for record in trained.training.history]
    lr = trained.config.train.lr
    assert lrs[0] < lr and lrs[-1] < 0.05 * lr and lrs == sorted(lrs, reverse=True)


def test_an_old_artifact_with_an_unservable_fusion_fails_to_load_in_one_line(
        trained, tmp_path: Path) -> None:
    """Models saved before fusions were built ahead of training can still hold a fusion weight
    naming no task: loading names the file and key instead of raising a bare ValueError."""
    from rankengine.artifact import MANIFEST, sha256_file
    from rankengine.errors import ConfigError

    path = save_artifact(trained, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["fusion"]["weights"] = {"clik": 1.0}
    (path / "config.json").write_text(json.dumps(config))
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"]["config.json"] = sha256_file(path / "config.json")
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError) as caught:
        load_artifact(path)
    assert str(caught.value) == (
        f"{path / 'config.json'}: [fusion]: weights: unknown task 'clik'; tasks: click, "
        f"favorite, order, pay, dwell; did you mean 'click'?")


def test_the_saved_config_must_read_back_the_same(tmp_path: Path, engine) -> None:
    from rankengine.errors import ConfigError
    from rankengine.train import check_saved_config

    (tmp_path / "engine.toml").write_text(tiny_config_text(tmp_path))
    config = load_config(tmp_path / "engine.toml")
    check_saved_config(config, engine)
    bad = config.model_copy(update={"train": config.train.model_copy(
        update={"lr": float("nan")})})
    with pytest.raises(ConfigError, match=r"engine\.toml: \[train\.lr\]: expected a finite "
                                          r"number, found nan"):
        check_saved_config(bad, engine)


def test_ema_keeps_the_moving_average_of_the_weights_after_each_step(
        tmp_path: Path, funnel_dir: Path) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    decay = 0.9
    text = tiny_config_text(funnel_dir).replace(
        "progress = false", f"progress = false\nema_decay = {decay}")
    (tmp_path / "engine.toml").write_text(text)
    config = load_config(tmp_path / "engine.toml")
    assert config.train.ema_decay == decay
    config.train.epochs, config.train.early_stopping = 1, None  # keep the last weights
    steps: list[dict[str, torch.Tensor]] = []

    def record(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        steps.append({str(i): p.detach().clone()
                      for i, p in enumerate(optimizer.param_groups[0]["params"])})

    handle = register_optimizer_step_post_hook(record)
    try:
        trained = train(config, progress=False)
    finally:
        handle.remove()
    params = trained.model.training_parameters()
    assert len(steps) > 3
    # the first step's weights, then avg = decay * avg + (1 - decay) * weights
    expected = [steps[0][str(i)] for i in range(len(params))]
    for weights in steps[1:]:
        expected = [decay * avg + (1 - decay) * weights[str(i)]
                    for i, avg in enumerate(expected)]
    last = [steps[-1][str(i)] for i in range(len(params))]
    for kept, avg in zip(params, expected, strict=True):
        assert torch.allclose(kept, avg, atol=1e-6)
    assert not all(torch.equal(kept, w) for kept, w in zip(params, last, strict=True))
    # the recorded validation of the epoch is the averaged model's
    assert trained.training.metrics["valid"]["click"]["auc"] == pytest.approx(
        trained.training.history[0]["valid"]["click"]["auc"], abs=1e-9)
