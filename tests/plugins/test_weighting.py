"""Loss weightings and sample weightings: each does what its paper / docstring claims."""

from __future__ import annotations

import itertools
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from rankengine_plugins.weighting import min_norm_weights, project_conflicting
from torch import nn

from rankengine import DataError, SharedParameters
from rankengine.config import TaskSpec, load_config
from rankengine.data.batching import Batch, ModelInput
from rankengine.graph import TaskGraph
from rankengine.pluginmanager import Engine
from rankengine.train import Objective, train

from ..conftest import tiny_config_text

TWO = TaskGraph({"a": TaskSpec(label="a", type="regression"),
                 "b": TaskSpec(label="b", type="regression")})


def make(engine: Engine, kind: str, graph: TaskGraph = TWO, **params: object):
    component = engine.components.loss_weightings.get(kind)
    return component.factory(graph, component.parse_params(params))


class TwoHeads(nn.Module):
    """A shared linear layer and one linear head per task: the smallest multi-task model."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.shared = nn.Linear(4, 8)
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.shared(x))
        return torch.cat([head(h) for head in self.heads], dim=1)

    def shared_parameters(self) -> SharedParameters:
        return SharedParameters(all=list(self.shared.parameters()),
                                last=list(self.shared.parameters()))


def regression_data(noise: tuple[float, float], rows: int = 512) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 4, generator=g)
    clean = torch.stack([x[:, 0] + x[:, 1], x[:, 2] - x[:, 3]], dim=1)
    return x, clean + torch.randn(rows, 2, generator=g) * torch.tensor(noise)


def fit(weighting, steps: int, noise: tuple[float, float] = (0.1, 1.0),
        scale: tuple[float, float] = (1.0, 1.0)) -> TwoHeads:
    model = TwoHeads()
    x, y = regression_data(noise)
    optimizer = torch.optim.Adam([*model.parameters(), *weighting.parameters()], lr=0.02)
    for _ in range(steps):
        losses = ((model(x) - y) ** 2).mean(0) * torch.tensor(scale)
        optimizer.zero_grad()
        weighting.backward(losses, model.shared_parameters())
        optimizer.step()
    return model


def test_uncertainty_gives_the_noisier_task_the_smaller_weight(engine: Engine) -> None:
    weighting = make(engine, "uncertainty")
    fit(weighting, 1500)
    w = weighting.current_weights()
    assert w["a"] > 10 * w["b"]
    # Optimum for regression: 0.5 * exp(-s) = 0.5 / L, with L ≈ noise variance (1.0 for b).
    assert w["b"] == pytest.approx(0.5, rel=0.35)


def test_uncertainty_treats_classification_and_regression_differently(engine: Engine) -> None:
    graph = TaskGraph({"click": TaskSpec(label="click"),
                       "dwell": TaskSpec(label="dwell", type="regression", after="click")})
    weighting = make(engine, "uncertainty", graph)
    losses = torch.tensor([0.7, 2.0])
    s = weighting.log_variance.detach()
    expected = (torch.exp(-s[0]) * 0.7 + 0.5 * s[0]) + (0.5 * torch.exp(-s[1]) * 2.0 + 0.5 * s[1])
    assert weighting.combine(losses).item() == pytest.approx(expected.item())
    assert weighting.current_weights() == {"click": 1.0, "dwell": 0.5}


def test_dwa_raises_the_weight_of_the_task_whose_loss_stalls(engine: Engine) -> None:
    weighting = make(engine, "dwa", temperature=2.0)
    weighting.after_epoch(1, {"a": 1.0, "b": 1.0})
    assert weighting.current_weights() == {"a": 1.0, "b": 1.0}
    weighting.after_epoch(2, {"a": 0.5, "b": 0.99})
    w = weighting.current_weights()
    ea, eb = math.exp(0.5 / 2), math.exp(0.99 / 2)
    assert w["b"] == pytest.approx(2 * eb / (ea + eb)) and w["b"] > w["a"]
    assert sum(w.values()) == pytest.approx(2.0)


def test_gradnorm_balances_gradient_norms_on_the_shared_layer(engine: Engine) -> None:
    weighting = make(engine, "gradnorm", alpha=0.0)  # alpha = 0: equal gradient norms
    model = fit(weighting, 400, noise=(0.1, 0.1), scale=(1.0, 30.0))
    w = weighting.current_weights()
    assert w["a"] > 3 * w["b"]  # the loss 30 times larger gets a much smaller weight
    assert sum(w.values()) == pytest.approx(2.0, rel=0.05)
    x, y = regression_data((0.1, 0.1))
    losses = ((model(x) - y) ** 2).mean(0) * torch.tensor([1.0, 30.0])
    norms = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        w[t] * losses[i], list(model.shared.parameters()), retain_graph=True)]).norm().item()
        for i, t in enumerate(("a", "b"))]
    raw = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        losses[i], list(model.shared.parameters()), retain_graph=True)]).norm().item()
        for i in range(2)]
    # Weighted norms are much closer together than the raw ones.
    assert max(norms) / min(norms) < 0.5 * max(raw) / min(raw)


def test_pcgrad_leaves_agreeing_gradients_alone_and_removes_conflicts() -> None:
    agreeing = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.allclose(project_conflicting(agreeing), agreeing.sum(0))
    conflicting = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    # g1' = g1 - (g1·g2/|g2|²) g2 = (0.5, 0.5); g2' = g2 - (g2·g1/|g1|²) g1 = (0, 1)
    assert torch.allclose(project_conflicting(conflicting), torch.tensor([0.5, 1.5]))
    g = torch.randn(2, 50, generator=torch.Generator().manual_seed(3))
    g[1] -= 2 * (g[0] @ g[1]).abs() / (g[0] @ g[0]) * g[0]  # make sure they conflict
    assert g[0] @ g[1] < 0
    g0 = g[0] - (g[0] @ g[1]) / (g[1] @ g[1]) * g[1]
    g1 = g[1] - (g[1] @ g[0]) / (g[0] @ g[0]) * g[0]
    assert abs(float(g0 @ g[1])) < 1e-4 and abs(float(g1 @ g[0])) < 1e-4  # conflict removed
    assert torch.allclose(project_conflicting(g), g0 + g1, atol=1e-5)


def test_pcgrad_backward_projects_shared_and_keeps_heads_plain(engine: Engine) -> None:
    weighting = make(engine, "pcgrad")
    model = TwoHeads()
    x, y = regression_data((0.1, 0.1))
    losses = ((model(x) - y) ** 2).mean(0)
    shared = model.shared_parameters()
    per_task = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        losses[k], shared.all, retain_graph=True)]) for k in range(2)])
    heads = torch.autograd.grad(losses.sum(), list(model.heads.parameters()), retain_graph=True)
    weighting.backward(losses, shared)
    got = torch.cat([p.grad.reshape(-1) for p in shared.all])
    assert torch.allclose(got, project_conflicting(per_task), atol=1e-6)
    for p, g in zip(model.heads.parameters(), heads, strict=True):
        assert torch.allclose(p.grad, g)


def test_min_norm_weights_match_the_two_task_closed_form() -> None:
    g = torch.tensor([[1.0, 0.0], [0.2, 2.0]])
    gram = g @ g.T
    w = min_norm_weights(gram, torch.zeros(2))
    closed = float(((g[1] - g[0]) @ g[1]) / ((g[0] - g[1]) @ (g[0] - g[1])))
    assert w[0].item() == pytest.approx(closed, abs=1e-4)
    assert w.sum().item() == pytest.approx(1.0)
    bounded = min_norm_weights(gram, torch.tensor([0.0, 0.4]))
    assert bounded[1].item() == pytest.approx(max(0.4, 1 - closed), abs=1e-4)


def test_min_norm_weights_beat_every_point_of_a_grid() -> None:
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(5))
    gram, lower = g @ g.T, torch.tensor([0.1, 0.0, 0.2])
    w = min_norm_weights(gram, lower)
    assert (w >= lower - 1e-6).all() and w.sum().item() == pytest.approx(1.0, abs=1e-5)
    best = float(w @ gram @ w)
    for a, b in itertools.product(np.linspace(0, 1, 41), repeat=2):
        v = torch.tensor([a, b, 1 - a - b], dtype=torch.float32)
        if (v >= lower).all():
            assert best <= float(v @ gram @ v) + 1e-5


def test_pareto_weighting_sets_min_norm_weights_each_step(engine: Engine) -> None:
    weighting = make(engine, "pareto", min_weights={"b": 0.3})
    model = TwoHeads()
    x, y = regression_data((0.1, 1.0))
    losses = ((model(x) - y) ** 2).mean(0)
    weighting.backward(losses, model.shared_parameters())
    w = weighting.current_weights()
    assert sum(w.values()) == pytest.approx(2.0) and w["b"] >= 0.6 - 1e-6
    with pytest.raises(ValueError, match="sum to at most 1"):
        make(engine, "pareto", min_weights={"a": 0.7, "b": 0.7})


@pytest.mark.parametrize("kind", ["uncertainty", "dwa", "gradnorm", "pcgrad", "pareto"])
def test_every_weighting_trains_a_real_model_and_logs_its_weights(
        kind: str, tmp_path: Path, funnel_dir: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(tiny_config_text(funnel_dir, extra=f'[loss]\nweighting = "{kind}"'))
    trained = train(load_config(path), progress=False)
    result = trained.result
    tasks = set(trained.graph.names)
    assert len(result.history) == trained.config.train.epochs
    for record in result.history:
        assert set(record["loss_weights"]) == tasks
        assert all(math.isfinite(v) and v >= 0 for v in record["loss_weights"].values())
    assert result.metrics["valid"]["click"]["auc"] > 0.55


# -- sample weightings ------------------------------------------------------------------------

GRAPH = TaskGraph({"click": TaskSpec(label="click"),
                   "buy": TaskSpec(label="buy", after="click")})


def sample_weighting(engine: Engine, kind: str, **params: object):
    component = engine.components.sample_weightings.get(kind)
    return component.factory(GRAPH, component.parse_params(params))


def objective_losses(engine: Engine, weighting, labels, logits, extras):  # type: ignore[no-untyped-def]
    cascade = engine.components.cascades.get("esmm")
    model_cascade = cascade.factory(GRAPH, cascade.parse_params({}))
    losses = [engine.components.losses.get("bce").factory(None) for _ in GRAPH.nodes]
    objective = Objective(GRAPH, types.SimpleNamespace(cascade=model_cascade), losses, weighting)
    n = labels.shape[0]
    batch = Batch(ModelInput(torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0), []), labels,
                  extras)
    return objective(model_cascade.compose(logits), batch)


def test_zero_sample_weight_removes_a_row_exactly(engine: Engine) -> None:
    labels = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    logits = [torch.tensor([0.5, -0.2, 1.0, -1.5], requires_grad=True),
              torch.tensor([0.3, 0.1, -0.4, 2.0], requires_grad=True)]
    weights = {"w": torch.tensor([1.0, 0.0, 2.0, 1.0])}
    column = sample_weighting(engine, "column", column="w")
    with_zero = objective_losses(engine, column, labels, logits, weights)
    keep = [0, 2, 2, 3]  # row 1 dropped, row 2 (weight 2) twice
    plain = objective_losses(engine, sample_weighting(engine, "none"), labels[keep],
                             [t[keep] for t in logits], {})
    assert torch.allclose(with_zero, plain, atol=1e-6)
    grads = torch.autograd.grad(with_zero.sum(), logits)
    assert grads[0][1] == 0 and grads[1][1] == 0  # the zero-weight row has no influence


def test_column_weighting_applies_to_chosen_tasks_only(engine: Engine) -> None:
    w = sample_weighting(engine, "column", column="w", tasks=["buy"])
    labels = torch.zeros(3, 2)
    out = w.weights(labels, {"w": torch.tensor([0.0, 2.0, 5.0])})
    assert out.tolist() == [[1.0, 0.0], [1.0, 2.0], [1.0, 5.0]]
    with pytest.raises(Exception, match="unknown task 'bye'"):
        sample_weighting(engine, "column", column="w", tasks=["bye"])


def test_dwell_time_weights_positives_by_capped_log_seconds(engine: Engine) -> None:
    w = sample_weighting(engine, "dwell_time", column="dwell", scale=0.5, cap=3.0)
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    seconds = torch.tensor([9.0, 1e6, 0.0])
    out = w.weights(labels, {"dwell": seconds})
    assert out[:, 0].tolist() == pytest.approx([1 + 0.5 * math.log(10.0), 1 + 0.5 * 3.0, 1.0])
    assert out[:, 1].tolist() == [1.0, 1.0, 1.0]  # only the first task (click) by default


def test_bad_weight_columns_are_refused_with_file_and_row(engine: Engine) -> None:
    w = sample_weighting(engine, "column", column="w")
    with pytest.raises(DataError, match=r"train.parquet: column 'w' row 2: .*finite.*nan"):
        w.check({"w": np.array([1.0, 0.5, np.nan])}, where="train.parquet")
    with pytest.raises(DataError, match=r"row 1: sample weights must be >= 0, found -1.0"):
        w.check({"w": np.array([1.0, -1.0, 3.0])}, where="train.parquet")
