"""Losses: pair sampling, BPR, RankNet, hinge, listwise and training with them; focal, and
several pointwise losses per task."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from rankengine import sample_pairs
from rankengine.config import load_config
from rankengine.data.batching import TensorData, iterate_batches
from rankengine.data.dataset import EncodedData
from rankengine.errors import ConfigError
from rankengine.pluginmanager import Engine
from rankengine.train import train

from ..conftest import tiny_config_text


def ranking_loss(engine: Engine, kind: str, **params: object):
    component = engine.components.losses.get(kind)
    return component.factory(component.parse_params(params))


def random_groups(seed: int, rows: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 12, (rows,), generator=g)
    groups = torch.repeat_interleave(torch.arange(rows), sizes)[:rows]
    relevance = torch.randint(0, 4, (rows,), generator=g).float() * (torch.rand(rows, generator=g)
                                                                      < 0.4)
    return relevance, groups


@pytest.mark.parametrize("seed", range(5))
def test_sample_pairs_match_all_ordered_pairs_and_respect_the_cap(seed: int) -> None:
    relevance, groups = random_groups(seed)
    expected = {(i, j) for i, j in itertools.permutations(range(len(groups)), 2)
                if groups[i] == groups[j] and relevance[i] > relevance[j]}
    i, j = sample_pairs(relevance, groups, max_pairs_per_group=10_000)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expected
    i, j = sample_pairs(relevance, groups, 3, torch.Generator().manual_seed(seed))
    pairs = set(zip(i.tolist(), j.tolist(), strict=True))
    assert pairs <= expected and len(pairs) == len(i)
    per_group = {int(g): sum(1 for a, _ in expected if groups[a] == g) for g in groups.unique()}
    for g, available in per_group.items():
        assert sum(1 for a in i.tolist() if groups[a] == g) == min(3, available)


def test_bpr_is_antisymmetric_and_fades_for_separated_pairs(engine: Engine) -> None:
    bpr = ranking_loss(engine, "bpr")
    d = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0])
    tied = torch.zeros(5, dtype=torch.bool)
    assert torch.allclose(bpr.pair_loss(d, tied) - bpr.pair_loss(-d, tied), -d, atol=1e-6)
    scores = torch.tensor([25.0, 0.0], requires_grad=True)  # well separated
    loss = bpr(scores, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), max_pairs_per_group=5)
    (grad,) = torch.autograd.grad(loss, scores)
    assert grad.abs().max() < 1e-9 and grad[0] == -grad[1]


def test_hinge_has_zero_gradient_beyond_the_margin(engine: Engine) -> None:
    hinge = ranking_loss(engine, "pairwise_hinge", margin=1.0)
    relevance, groups = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([7, 7, 7])
    separated = torch.tensor([3.0, 1.5, 0.0], requires_grad=True)
    loss = hinge(separated, relevance, groups, max_pairs_per_group=10)
    assert loss.item() == 0.0
    assert torch.autograd.grad(loss, separated)[0].abs().sum() == 0
    close = torch.tensor([1.0, 0.5, 0.0], requires_grad=True)
    loss = hinge(close, relevance, groups, max_pairs_per_group=10)
    # pairs (0,1): 0.5, (0,2): 0.0, (1,2): 0.5 → mean 1/3
    assert loss.item() == pytest.approx(1.0 / 3.0)
    grad = torch.autograd.grad(loss, close)[0]
    assert grad.sum().item() == pytest.approx(0.0)  # each pair pushes +/- equally


def test_ranknet_ties_pull_scores_together(engine: Engine) -> None:
    ranknet = ranking_loss(engine, "ranknet", ties=True, sigma=2.0)
    tied_rel, groups = torch.tensor([1.0, 1.0]), torch.tensor([0, 0])
    at = {x: ranknet(torch.tensor([x, 0.0]), tied_rel, groups, max_pairs_per_group=4).item()
          for x in (-1.0, 0.0, 1.0)}
    assert at[0.0] == pytest.approx(math.log(2.0)) and at[0.0] < at[1.0] and at[0.0] < at[-1.0]
    plain = ranking_loss(engine, "ranknet")
    assert plain(torch.tensor([0.0, 0.0]), tied_rel, groups, max_pairs_per_group=4).item() == 0


def test_listwise_matches_a_per_group_reference(engine: Engine) -> None:
    listwise = ranking_loss(engine, "listwise")
    relevance, groups = random_groups(3)
    scores = torch.randn(len(groups), generator=torch.Generator().manual_seed(1))
    reference = []
    for g in groups.unique():
        rows = groups == g
        if relevance[rows].sum() > 0:
            share = relevance[rows] / relevance[rows].sum()
            reference.append(-(share * torch.log_softmax(scores[rows], 0)).sum())
    got = listwise(scores, relevance, groups, max_pairs_per_group=1)
    assert got.item() == pytest.approx(torch.stack(reference).mean().item(), rel=1e-5)
    nothing = listwise(scores, torch.zeros_like(relevance), groups, max_pairs_per_group=1)
    assert nothing.item() == 0.0


def test_group_batches_keep_every_request_together() -> None:
    groups = torch.repeat_interleave(torch.arange(300), torch.randint(
        1, 20, (300,), generator=torch.Generator().manual_seed(0)))
    perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(1))
    groups = groups[perm].numpy()  # rows of a request scattered through the file
    n = len(groups)
    data = TensorData(EncodedData(
        torch.arange(n).unsqueeze(1).numpy(), torch.zeros(n, 0).numpy(), [],
        torch.zeros(n, 1).numpy(), groups))
    seen: list[int] = []
    batches = list(iterate_batches(data, 256, shuffle=True, keep_groups=True,
                                   generator=torch.Generator().manual_seed(2)))
    for batch in batches:
        g = batch.groups
        assert g is not None
        change = (g[1:] != g[:-1]).sum().item()
        assert change == len(g.unique()) - 1  # contiguous
        seen += batch.inputs.ids[:, 0].tolist()
    assert sorted(seen) == list(range(n))  # every row exactly once
    owners = [set(b.groups.tolist()) for b in batches]
    assert all(not (a & b) for a, b in itertools.combinations(owners, 2))  # whole groups
    assert all(len(b) <= 256 + 19 for b in batches)


@pytest.mark.parametrize("ranking", [
    'kind = "bpr"\ntarget = "fused"\nweight = 0.5',
    'kind = "listwise"\ntarget = "click"',
    'kind = "pairwise_hinge"\nmargin = 0.5\nrelevance = { click = 1, pay = 5 }',
])
def test_training_with_a_ranking_loss(ranking: str, tmp_path: Path, funnel_dir: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(tiny_config_text(funnel_dir, extra=f"[loss.ranking]\n{ranking}\n"))
    result = train(load_config(path), progress=False).result
    losses = [h["train_ranking_loss"] for h in result.history]
    assert all(math.isfinite(v) and v > 0 for v in losses)
    assert losses[-1] < losses[0]
    assert result.metrics["valid"]["click"]["auc"] > 0.55


@pytest.mark.parametrize("ranking,key,message", [
    ('kind = "bce"', "loss.ranking.kind", "'bce' is a pointwise loss"),
    ('kind = "bpr"\ntarget = "dwell"', "loss.ranking.target", "expected 'fused' or a binary"),
    ('kind = "bpr"\nrelevance = { clik = 1 }', "loss.ranking.relevance", "'clik'"),
    ('kind = "bpr"\nmargin = 1', "loss.ranking", "margin"),
])
def test_ranking_config_errors_name_the_key(ranking: str, key: str, message: str,
                                            tmp_path: Path, funnel_dir: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(tiny_config_text(funnel_dir, extra=f"[loss.ranking]\n{ranking}\n"))
    with pytest.raises(ConfigError) as error:
        train(load_config(path), progress=False)
    assert key in str(error.value) and message in str(error.value)


def test_ranking_needs_request_groups(tmp_path: Path, funnel_dir: Path) -> None:
    path = tmp_path / "engine.toml"
    text = tiny_config_text(funnel_dir, extra='[loss.ranking]\nkind = "bpr"\n')
    path.write_text(text.replace('group = "request_id"\n', ""))
    with pytest.raises(ConfigError, match=r"\[data\] group"):
        train(load_config(path), progress=False)


# -- pointwise: focal, several losses per task (issue #18 item 5) --------------------------------


def test_focal_loss_is_cross_entropy_scaled_by_how_wrong_the_row_is(engine: Engine) -> None:
    from rankengine import NodePrediction

    logits = torch.tensor([-3.0, -0.5, 0.0, 2.0, 6.0], dtype=torch.float64)
    prediction = NodePrediction(torch.nn.functional.logsigmoid(logits),
                                torch.nn.functional.logsigmoid(-logits), logits)
    p = torch.sigmoid(logits)
    ones, zeros = torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    focal = ranking_loss(engine, "focal", gamma=2.0)
    torch.testing.assert_close(focal(prediction, ones), -(1 - p) ** 2 * torch.log(p))
    torch.testing.assert_close(focal(prediction, zeros), -p ** 2 * torch.log(1 - p))
    bce = ranking_loss(engine, "bce")
    torch.testing.assert_close(ranking_loss(engine, "focal", gamma=0.0)(prediction, ones),
                               bce(prediction, ones))
    weighted = ranking_loss(engine, "focal", gamma=2.0, alpha=0.25)
    torch.testing.assert_close(weighted(prediction, ones), 0.25 * focal(prediction, ones))
    # an easy row (p = 0.998 on a positive) counts far less than under cross-entropy
    assert focal(prediction, ones)[4] < 1e-4 * bce(prediction, ones)[4]


def test_a_task_trains_on_several_weighted_losses(tmp_path: Path, funnel_dir: Path,
                                                  engine: Engine) -> None:
    from rankengine.plan import WeightedLosses, make_plan

    text = tiny_config_text(funnel_dir).replace(
        'click = { label = "click", oracle = { p = "true_p_click" } }',
        'click = { label = "click", oracle = { p = "true_p_click" }, '
        'loss = ["bce", { kind = "focal", gamma = 1.0 }], loss_weights = [1.0, 0.5] }')
    path = tmp_path / "engine.toml"
    path.write_text(text)
    config = load_config(path)
    plan = make_plan(config, engine)
    combined = plan.losses[plan.graph.names.index("click")]
    assert isinstance(combined, WeightedLosses) and combined.weights == [1.0, 0.5]
    from rankengine import NodePrediction

    logits = torch.linspace(-4, 4, 9)
    prediction = NodePrediction(torch.nn.functional.logsigmoid(logits),
                                torch.nn.functional.logsigmoid(-logits), logits)
    target = (torch.arange(9) % 2).float()
    want = ranking_loss(engine, "bce")(prediction, target) + \
        0.5 * ranking_loss(engine, "focal", gamma=1.0)(prediction, target)
    torch.testing.assert_close(combined(prediction, target), want)
    assert [r.kind for r in config.tasks["click"].losses] == ["bce", "focal"]
    result = train(load_config(path), progress=False).result
    assert result.metrics["valid"]["click"]["auc"] > 0.55


@pytest.mark.parametrize(("loss", "key", "message"), [
    ('loss = ["bce", "focal"], loss_weights = [1.0]', "tasks.click",
     "loss_weights: expected one weight per loss (2), found 1"),
    ('loss = ["bce", "mse"]', "tasks.click.loss[1]", "loss 'mse' is for regression tasks"),
    ('loss = ["bce", "bpr"]', "tasks.click.loss[1]", "'bpr' is a ranking loss"),
    ('loss = ["bce", "focl"]', "tasks.click.loss[1].kind", "did you mean 'focal'"),
])
def test_several_losses_errors_name_the_entry(loss: str, key: str, message: str,
                                              tmp_path: Path, funnel_dir: Path) -> None:
    text = tiny_config_text(funnel_dir).replace(
        'click = { label = "click", oracle = { p = "true_p_click" } }',
        f'click = {{ label = "click", {loss} }}')
    path = tmp_path / "engine.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        train(load_config(path), progress=False)
    assert key in str(error.value) and message in str(error.value)


def test_regression_losses_of_different_links_are_refused(tmp_path: Path,
                                                          funnel_dir: Path) -> None:
    text = tiny_config_text(funnel_dir).replace('loss = "log_mse"', 'loss = ["log_mse", "mse"]')
    path = tmp_path / "engine.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"tasks\.dwell\.loss.*their links differ"):
        train(load_config(path), progress=False)
