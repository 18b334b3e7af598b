"""Fusion weight search: NDCG, the Pareto front, writing the tuned weights, CLI errors."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from rankengine.cli import cli
from rankengine.config import load_config
from rankengine.data.io import read_table
from rankengine.errors import ArtifactError
from rankengine.fusion import format_fusion_weights, parse_fusion_weights
from rankengine.predict import score_table
from rankengine.registry import RegistryStore
from rankengine.registry.artifacts import (
    FUSION_WEIGHTS_TAG,
    digest,
    load_version,
    path_of,
    register,
)
from rankengine.train import train
from rankengine.tune import (
    COMPARE_WIDTH,
    GroupedNDCG,
    Search,
    SearchSpace,
    ndcg_reference,
    pareto_front,
    run_search,
)

from .conftest import tiny_config_text


@dataclass
class Setup:
    store: RegistryStore
    url: str
    root: Path
    funnel: Path


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, funnel_dir: Path) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("tune")
    text = tiny_config_text(funnel_dir).replace("[train]\nepochs = 2", "[train]\nepochs = 1")
    (root / "engine.toml").write_text(text)
    trained = train(load_config(root / "engine.toml"), progress=False)
    url = f"sqlite:///{root / 'reg.db'}"
    store = RegistryStore(url)
    for _ in range(3):  # 1: searched, 2: written by --write, 3: hand-made tags
        register(store, root / "artifacts", trained, "demo")
    store.set_alias("demo", "champion", 2)
    ev = text.replace('kind = "weighted_product"\nweights = { click = 1.0, order = 1.0 }',
                      'kind = "expected_value"\nprobability = "click"\nvalue = "dwell"')
    assert ev != text
    (root / "ev.toml").write_text(ev)
    register(store, root / "artifacts", train(load_config(root / "ev.toml"), progress=False),
             "ev")
    yield Setup(store, url, root, funnel_dir)
    store.close()


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.output


# -- NDCG ---------------------------------------------------------------------------------------


def test_ndcg_by_hand() -> None:
    # group a: scores rank rows 1, 0, 2 (row 2 ties row 0 and comes later in the file);
    # the only positive (row 0) is at rank 1: DCG = 1/log2(3), ideal 1 → 0.6309.
    # group b: no positive, left out. group c: positives at ranks 0 and 2 of 3, both in the
    # top 2 only for rank 0: DCG@2 = 1, ideal@2 = 1 + 1/log2(3).
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    gains = np.array([1, 0, 0, 0, 0, 1, 0, 1], dtype=float)
    scores = np.array([0.5, 0.9, 0.5, 0.3, 0.1, 0.8, 0.7, 0.2])
    a = 1 / math.log2(3)
    c = 1 / (1 + 1 / math.log2(3))
    got = GroupedNDCG(groups, gains, 2)(scores)
    assert got[0] == pytest.approx((a + c) / 2)
    assert ndcg_reference(groups.tolist(), gains.tolist(), scores.tolist(), 2) == \
        pytest.approx((a + c) / 2)


@pytest.mark.parametrize("seed", range(12))
def test_vectorised_ndcg_equals_per_group_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 500))
    groups = rng.integers(0, int(rng.integers(1, 40)), n) * 7 + 3  # sparse, unsorted ids
    if seed % 3 == 0:  # one group wider than COMPARE_WIDTH: the argsort path
        groups[: COMPARE_WIDTH + 20] = -1
    gains = np.stack([(rng.random(n) < 0.15).astype(float),  # binary, many groups without
                      rng.integers(0, 3, n).astype(float),  # graded
                      np.zeros(n)], axis=1)  # no positive anywhere
    scores = rng.integers(0, 5, n).astype(float)  # many ties
    scores[rng.random(n) < 0.05] = np.nan
    k = int(rng.integers(1, 12))
    got = GroupedNDCG(groups, gains, k)(scores)
    for t in range(3):
        want = ndcg_reference(groups.tolist(), gains[:, t].tolist(), scores.tolist(), k)
        if math.isnan(want):
            assert math.isnan(got[t]) and t == 2
        else:
            assert got[t] == pytest.approx(want, abs=1e-12)
    assert got[0] <= 1 + 1e-12 and got[1] <= 1 + 1e-12


def test_ndcg_counts_only_requests_with_a_positive() -> None:
    groups = np.repeat(np.arange(4), 3)
    gains = np.zeros(12)
    gains[[0, 3]] = 1  # groups 0 and 1 have a positive; 2 and 3 none
    evaluator = GroupedNDCG(groups, gains, 3)
    assert evaluator.groups_total == 4 and evaluator.groups_positive.tolist() == [2]
    top = np.where(gains > 0, 1.0, 0.0)
    assert evaluator(top)[0] == pytest.approx(1.0)  # not 0.5: empty requests are left out


# -- Pareto front and search --------------------------------------------------------------------


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((a >= b).all() and (a > b).any())


def test_pareto_front_small() -> None:
    values = np.array([[0.70, 0.60], [0.68, 0.64], [0.66, 0.63], [0.60, 0.66], [0.68, 0.64]])
    assert pareto_front(values) == [0, 1, 3, 4]  # 2 is beaten by 1; equal points both stay


@pytest.mark.parametrize("method", ["grid", "random", "bayes"])
def test_search_front_on_a_trained_model(reg: Setup, method: str) -> None:
    _, loaded = load_version(reg.store, "demo/1")
    data = reg.funnel / "valid.parquet"
    tasks = ["click", "order", "pay"]
    result = run_search(loaded, data, group="request_id", tasks=tasks, k=10, method=method,
                        trials=40, seed=3, priority=dict.fromkeys(tasks, 1.0))
    values = result.values
    assert 3 + len(tasks) <= len(result.points) <= 40
    assert len({tuple(p.values()) for p in result.points}) == len(result.points)
    front = set(result.front)
    for i in front:  # non-dominated
        assert not any(_dominates(values[j], values[i]) for j in range(len(values)))
    for i in set(range(len(values))) - front:  # and complete
        assert any(_dominates(values[j], values[i]) for j in front)
    for t in range(len(tasks)):  # the best single-task point of every task is on the front
        assert values[list(front), t].max() == values[:, t].max()
    assert result.recommended in front
    # The anchors: current weights first, then each task alone.
    assert result.points[0] == {"click": 1.0, "order": 1.0, "pay": 0.0}
    assert {"click": 0.0, "order": 0.0, "pay": 1.0} in result.points
    # Every reported value is what scoring with those weights gives, by the reference NDCG.
    table = read_table(data, sources=loaded.engine.components.sources)
    groups = table.column("request_id").to_pylist()
    labels = {t: np.asarray(table.column(t).to_numpy(), dtype=float) for t in tasks}
    labels["order"] *= labels["click"]
    labels["pay"] *= labels["order"]
    p = score_table(loaded, table)
    for i in (0, result.recommended):
        w = result.points[i]
        fused = np.exp(sum(w[t] * np.log(np.clip(p[f"p_{t}"], 1e-12, None)) for t in w))
        for j, t in enumerate(tasks):
            want = ndcg_reference(groups, labels[t].tolist(), fused.tolist(), 10)
            assert values[i, j] == pytest.approx(want, rel=1e-9)
    assert result.requests["click"] == len({g for g, c in zip(groups, labels["click"],
                                                                strict=True) if c})


def test_search_is_seeded_and_grid_levels_cover_the_range(reg: Setup) -> None:
    _, loaded = load_version(reg.store, "demo/1")
    runs = [run_search(loaded, reg.funnel / "valid.parquet", group="request_id",
                       tasks=["click", "order"], k=5, method=m, trials=15, seed=s,
                       priority={"click": 1.0, "order": 1.0})
            for m, s in (("bayes", 1), ("bayes", 1), ("bayes", 2), ("grid", 0))]
    assert runs[0].points == runs[1].points
    assert runs[0].points != runs[2].points
    grid = runs[3].points
    assert len(grid) <= 15
    ratios = {round(math.log10(p["order"] / p["click"]), 6) for p in grid
              if p["click"] and p["order"]}
    assert min(ratios) == pytest.approx(-2) and max(ratios) == pytest.approx(2)
    assert all(max(p.values()) == 1.0 for p in grid)  # normalised: the largest weight is 1


@pytest.mark.parametrize("method", ["grid", "random", "bayes"])
def test_search_keeps_its_front_while_adding(method: str) -> None:
    rng = np.random.default_rng(5)
    space = SearchSpace(["a", "b", "c"], ["a", "b", "c"], {}, 1.0)

    def evaluate(weights: dict[str, float]) -> np.ndarray:  # coarse values: many ties
        return np.round(rng.random(3) * 4) / 4

    search = Search(space, evaluate, 120, seed=0)
    search.run(method, np.ones(3))
    assert len(search.points) == len(search.values) <= 120
    assert sorted(search.front) == pareto_front(np.array(search.values))


def test_search_space_keeps_unsearched_weights() -> None:
    space = SearchSpace(["click", "order", "pay"], ["order"], {"click": 2.0}, 2.0)
    assert not space.normalise
    assert space.weights(np.array([0.5])) == {"click": 2.0, "order": 1.0}


def test_fusion_weights_tag_round_trip() -> None:
    weights = {"click": 1.0, "order": 0.3162, "pay": 0.0}
    text = format_fusion_weights(weights)
    assert text == "click=1,order=0.3162,pay=0"
    assert parse_fusion_weights(text, where="t") == weights
    assert parse_fusion_weights({"click": 2}, where="t") == {"click": 2.0}
    with pytest.raises(ArtifactError, match="weight of 'order' is not a number"):
        parse_fusion_weights("click=1,order=x", where="t")


# -- the command and --write --------------------------------------------------------------------


def test_cli_prints_front_and_current(reg: Setup) -> None:
    code, _, out = invoke("tune-fusion", "demo/1", "--data", str(reg.funnel / "valid.parquet"),
                          "--registry", reg.url, "--trials", "25", "--method", "random",
                          "--tasks", "click,order,pay", "--priority", "pay=2")
    assert code == 0, out
    assert "Pareto front of ndcg@10 per task" in out and "★ recommended" in out
    assert "current" in out and ("on the front" in out or "dominated by" in out)
    assert "mean over the requests with at least one positive" in out
    assert "priorities click=1, order=1, pay=2" in out
    assert "evaluated 25 weight vectors" in out


def test_write_serves_the_recommended_weights(reg: Setup) -> None:
    store = reg.store
    before = store.get_version("demo", 2)
    path = path_of(before.artifact_uri or "")
    files = {p.name: p.read_bytes() for p in path.iterdir()}
    _, old = load_version(store, "demo@champion")
    test = read_table(reg.funnel / "test.parquet", sources=old.engine.components.sources)
    old_scores = score_table(old, test)["score"]

    data = reg.funnel / "valid.parquet"
    code, stdout, out = invoke("tune-fusion", "demo@champion", "--data", str(data),
                               "--registry", reg.url, "--trials", "30", "--tasks",
                               "click,order,pay", "--priority", "click=0", "--priority",
                               "order=0", "--write", "--json")
    assert code == 0, out
    record = json.loads(stdout)
    after = store.get_version("demo", 2)
    stored = after.metrics["fusion_search"]
    assert stored == record
    assert stored["metric"] == "ndcg@10" and stored["data"] == str(data.resolve())
    assert stored["rows"] == pq.read_metadata(data).num_rows
    assert set(stored["current"]) == {"weights", "metrics"}
    assert stored["current"]["weights"] == {"click": 1.0, "order": 1.0, "pay": 0.0}
    recommended = stored["points"][stored["recommended"]]
    assert set(recommended) == {"weights", "metrics"}
    assert set(recommended["metrics"]) == {"click", "order", "pay"}
    # pay alone decides the pick: it is the best pay NDCG among the stored points
    assert recommended["metrics"]["pay"] == max(p["metrics"]["pay"] for p in stored["points"])
    weights = recommended["weights"]
    assert weights != stored["current"]["weights"]
    assert after.tags[FUSION_WEIGHTS_TAG] == format_fusion_weights(weights)
    # Nothing else changed: the other metrics, the config, the artifact bytes and its digest.
    assert after.metrics["splits"] == before.metrics["splits"]
    assert after.config == before.config and after.artifact_sha256 == before.artifact_sha256
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files
    assert digest(path)[0] == before.artifact_sha256
    assert store.get_version("demo", 1).tags == {}  # only the named version

    _, tuned = load_version(store, "demo@champion")
    assert tuned.fusion.params.weights == weights  # type: ignore[attr-defined]
    assert tuned.config.fusion.params["weights"] == weights
    scored = score_table(tuned, test)
    p = np.stack([scored[f"p_{t}"] for t in weights], axis=1)
    want = np.exp(np.log(np.clip(p, 1e-12, None)) @ np.array(list(weights.values())))
    np.testing.assert_allclose(scored["score"], want, rtol=1e-9)
    assert not np.allclose(scored["score"], old_scores)
    ids = test.column("request_id").to_numpy()
    changed = [r for r in np.unique(ids)[:200]
               if (np.argsort(-old_scores[ids == r], kind="stable")
                   != np.argsort(-scored["score"][ids == r], kind="stable")).any()]
    assert changed  # the ranking of some requests changed

    # `rank` and `models show` use and show the tuned weights.
    request = int(changed[0])
    code, _, out = invoke("rank", "demo@champion", "--registry", reg.url, "--data",
                          str(reg.funnel / "test.parquet"), "--request", str(request),
                          "--top-k", "1")
    assert code == 0, out
    top = scored["score"][ids == request].max()
    assert f"{top:.4g}" in out
    code, _, out = invoke("models", "show", "demo@champion", "--url", reg.url)
    assert code == 0 and FUSION_WEIGHTS_TAG in out and format_fusion_weights(weights) in out
    # A new search starts from the served weights and searches the tasks they name.
    code, stdout, out = invoke("tune-fusion", "demo@champion", "--data", str(data),
                               "--registry", reg.url, "--trials", "3", "--json")
    assert code == 0, out
    again = json.loads(stdout)
    assert again["current"]["weights"] == weights
    assert set(again["current"]["metrics"]) == {"click", "order", "pay"}
    assert again["current"]["metrics"] == recommended["metrics"]
    assert store.get_version("demo", 2).metrics["fusion_search"] == record  # not written
    # The HTML report draws the stored search with the recommended point highlighted.
    html = reg.root / "report.html"
    code, _, out = invoke("report", "demo@champion", "--registry", reg.url, "-o", str(html),
                          "--max-rows", "2000")
    assert code == 0, out
    page = html.read_text()
    assert 'id="fusion-table"' in page
    assert f'class="better" data-point="{stored["recommended"]}"' in page


def test_bad_weights_tag_is_a_clear_load_error(reg: Setup) -> None:
    reg.store.patch_version("demo", 3, tags={FUSION_WEIGHTS_TAG: "click=1,ordr=2"})
    with pytest.raises(ArtifactError, match=r"demo/3 tag fusion_weights: .*ordr"):
        load_version(reg.store, "demo/3")
    reg.store.patch_version("demo", 3, tags={FUSION_WEIGHTS_TAG: "click=fast"})
    with pytest.raises(ArtifactError, match="weight of 'click' is not a number"):
        load_version(reg.store, "demo/3")
    reg.store.patch_version("demo", 3, tags={FUSION_WEIGHTS_TAG: None})  # None removes it
    assert FUSION_WEIGHTS_TAG not in reg.store.get_version("demo", 3).tags
    assert load_version(reg.store, "demo/3")[1].fusion.params.weights == {  # type: ignore
        "click": 1.0, "order": 1.0}


def test_cli_errors(reg: Setup, tmp_path: Path) -> None:
    valid = reg.funnel / "valid.parquet"
    base = ["--registry", reg.url, "--trials", "5"]

    def fails(*args: str) -> str:
        code, _, out = invoke("tune-fusion", *args)
        assert code != 0, out
        assert "Traceback" not in out
        return out

    assert "no model named 'dmeo'" in fails("dmeo@champion", "--data", str(valid), *base)
    assert "has no alias 'champ'" in fails("demo@champ", "--data", str(valid), *base)
    assert "has no version 9" in fails("demo/9", "--data", str(valid), *base)
    assert "data file or directory not found" in fails("demo/1", "--data",
                                                       str(tmp_path / "x.parquet"), *base)
    table = pq.read_table(valid)
    pq.write_table(table.drop_columns(["request_id"]), tmp_path / "nogroup.parquet")
    out = fails("demo/1", "--data", str(tmp_path / "nogroup.parquet"), *base)
    assert "no group column 'request_id'" in out
    out = fails("demo/1", "--data", str(valid), "--group", "requestid", *base)
    assert "no group column 'requestid'" in out and "did you mean 'request_id'" in out
    pq.write_table(table.drop_columns(["order"]), tmp_path / "noorder.parquet")
    out = fails("demo/1", "--data", str(tmp_path / "noorder.parquet"), *base)
    assert "no label column 'order' for task 'order'" in out
    out = fails("demo/1", "--data", str(tmp_path / "noorder.parquet"), "--tasks", "pay", *base)
    assert "(the parent of a searched task)" in out
    out = fails("ev/1", "--data", str(valid), *base)
    assert "fusion 'expected_value' has no per-task weights to tune" in out
    assert "probability, value, tiebreak" in out
    assert "unknown task 'clik'" in fails("demo/1", "--data", str(valid), "--tasks", "clik",
                                          *base)
    out = fails("demo/1", "--data", str(valid), "--priority", "pay=1", *base)
    assert "'pay' is not a searched task" in out
    out = fails("demo/1", "--data", str(valid), "--method", "annealing", *base)
    assert "annealing" in out
    artifact = path_of(reg.store.get_version("demo", 1).artifact_uri or "")
    out = fails(str(artifact), "--data", str(valid), "--write", *base)
    assert "--write needs a registry reference" in out
    assert "fusion_search" not in reg.store.get_version("demo", 1).metrics


def test_fusion_weights_tags_are_validated_like_the_config(tmp_path: Path, engine) -> None:
    """A tag replaces [fusion] weights at every load: the same checks, naming the tag."""
    from rankengine.fusion import fusion_with_weights
    from rankengine.plan import build_graph

    (tmp_path / "engine.toml").write_text(tiny_config_text(tmp_path))
    config = load_config(tmp_path / "engine.toml")
    graph = build_graph(config, engine)
    where = "demo/3 tag fusion_weights"
    for raw, message in [
        ("click=1,order=-0.5", f"{where}: [fusion.weights.order]: expected a finite number >= 0; "
                               f"found -0.5"),
        ("click=1,ordr=2", f"{where}: [fusion]: weights: unknown task 'ordr'; tasks: click, "
                           f"favorite, order, pay, dwell; did you mean 'order'?"),
        ("click=nan", f"{where}: weight of 'click' is not finite"),
    ]:
        with pytest.raises(ArtifactError) as caught:
            fusion_with_weights(config, engine, graph, raw, where=where)
        assert str(caught.value).startswith(message), caught.value
    changed, fusion = fusion_with_weights(config, engine, graph, "order=2", where=where)
    assert changed.fusion.params["weights"] == {"order": 2.0}
    assert changed.source == config.source and config.fusion.params["weights"] == {
        "click": 1.0, "order": 1.0}
    assert fusion(torch.tensor([[0.5, 0.5, 0.5, 0.5, 1.0]])).item() == pytest.approx(0.25)
    ev = config.model_copy(update={"fusion": config.fusion.model_validate(
        {"kind": "expected_value", "probability": "click", "value": "dwell"})})
    with pytest.raises(ArtifactError, match=f"{where}: fusion 'expected_value' takes no weights"):
        fusion_with_weights(ev, engine, graph, "click=1", where=where)


def test_train_refuses_an_unusable_fusion_weights_tag_before_training(tmp_path: Path) -> None:
    # No data exists: the tag is refused before training would look for it.
    (tmp_path / "engine.toml").write_text(tiny_config_text(tmp_path / "nowhere"))
    code, _, output = invoke("train", "-c", str(tmp_path / "engine.toml"), "-o",
                             str(tmp_path / "m"), "--tag", "fusion_weights=clik=1")
    assert code == 1
    assert output.strip() == (
        "Error: --tag fusion_weights: [fusion]: weights: unknown task 'clik'; tasks: click, "
        "favorite, order, pay, dwell; did you mean 'click'?")


def test_cli_extremes_are_one_line_or_work(reg: Setup, tmp_path: Path) -> None:
    import warnings

    valid = reg.funnel / "valid.parquet"
    base = ["tune-fusion", "demo/1", "--registry", reg.url, "--trials", "5", "--json"]

    def error(*args: str) -> str:
        result = CliRunner().invoke(cli, [*base, *args])
        lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error")]
        assert result.exit_code != 0 and len(lines) == 1, result.output
        assert "internal error" not in lines[0], lines
        return lines[0]

    assert "'--seed': -1 is not in the range x>=0" in error("--data", str(valid), "--seed", "-1")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(valid).slice(0, 0), empty)
    assert f"{empty}: no rows to search the fusion weights on" in error("--data", str(empty))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way
        huge_k = CliRunner().invoke(cli, [*base, "--data", str(valid), "--k", str(10**21)])
        assert huge_k.exit_code == 0, huge_k.output  # NDCG@k past every request: all ranks
        front = json.loads(huge_k.stdout)
        assert front["metric"] == f"ndcg@{10**21}"
        big = CliRunner().invoke(cli, [*base, "--data", str(valid), "--priority", "click=1e308",
                                       "--priority", "order=1e308"])
        assert big.exit_code == 0, big.output
        assert json.loads(big.stdout)["recommended"] >= 0


def test_ndcg_with_a_cut_off_past_every_group_is_the_full_ndcg() -> None:
    groups = np.array([0, 0, 0, 1, 1])
    gains = np.array([1.0, 0.0, 2.0, 0.0, 1.0])
    scores = np.array([0.3, 0.2, 0.1, 0.9, 0.1])
    huge = GroupedNDCG(groups, gains, 10**18)(scores)  # allocated k entries before
    assert huge == pytest.approx(GroupedNDCG(groups, gains, 3)(scores))


def test_bayes_is_optuna_tpe_for_one_task_and_nsga2_for_several(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    used: list[str] = []
    for name in ("TPESampler", "NSGAIISampler"):
        original = getattr(optuna.samplers, name)
        monkeypatch.setattr(optuna.samplers, name,
                            lambda *a, _o=original, _n=name, **k: used.append(_n) or _o(*a, **k))

    def narrow(weights: dict[str, float]) -> np.ndarray:  # best at a = 0.05 (b fixed at 1)
        return np.array([-abs(math.log10(weights["a"]) + 1.3)])

    one = SearchSpace(["a", "b"], ["a"], {"b": 1.0}, 1.0)
    best = {}
    for method in ("bayes", "random"):
        found = []
        for seed in range(5):
            search = Search(one, narrow, 25, seed=seed)
            search.run(method, np.array([1.0]))
            found.append(max(v[0] for v in search.values))
        best[method] = float(np.mean(found))
    assert used == ["TPESampler"] * 5
    assert best["bayes"] > best["random"]  # the model of the objective pays off
    assert best["bayes"] > -0.05  # within 0.05 decades of the optimum
    two = SearchSpace(["a", "b"], ["a", "b"], {}, 1.0)
    search = Search(two, lambda w: np.array([w["a"], w["b"]]), 30, seed=0)
    search.run("bayes", np.ones(2))
    assert used[-1] == "NSGAIISampler" and len(search.points) == 30
