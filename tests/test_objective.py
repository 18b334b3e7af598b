"""The training objective: masks, loss spaces, sample weights and the conditional auxiliary loss."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from rankengine import NoParams
from rankengine.config import TaskSpec
from rankengine.data.batching import Batch, ModelInput
from rankengine.graph import TaskGraph
from rankengine.pluginmanager import Engine
from rankengine.train import Objective

GRAPH = TaskGraph({
    "click": TaskSpec(label="click"),
    "buy": TaskSpec(label="buy", after="click"),
    "dwell": TaskSpec(label="dwell", type="regression", after="click"),
})
LABELS = torch.tensor([[1.0, 1.0, 30.0], [1.0, 0.0, 5.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
LOGITS = [torch.tensor([0.5, -0.2, 1.0, -1.5]), torch.tensor([0.3, 0.1, -0.4, 2.0]),
          torch.tensor([20.0, 4.0, 9.0, 1.0])]


def objective(engine: Engine, cascade: str, sample: str = "none", **params: object):
    comp = engine.components.cascades.get(cascade)
    model_cascade = comp.factory(GRAPH, comp.parse_params(params))
    sw = engine.components.sample_weightings.get(sample)
    weights = {"weights": {"buy": 3.0}} if sample == "label_weight" else {}
    losses = [engine.components.losses.get(
        n.spec.loss.kind if n.spec.loss else ("bce" if n.type == "binary" else "mse")
    ).factory(NoParams()) for n in GRAPH.nodes]
    obj = Objective(GRAPH, types.SimpleNamespace(cascade=model_cascade), losses,
                    sw.factory(GRAPH, sw.parse_params(weights)))
    return obj, model_cascade.compose(LOGITS)


def batch() -> Batch:
    return Batch(ModelInput(torch.zeros(4, 0, dtype=torch.long), torch.zeros(4, 0), []), LABELS, {})


def bce(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(y * p.log() + (1 - y) * (1 - p).log())


def test_esmm_buy_loss_is_entire_space_and_dwell_is_masked(engine: Engine) -> None:
    obj, out = objective(engine, "esmm")
    losses = obj(out, batch())
    p_click, p_buy_c = torch.sigmoid(LOGITS[0]), torch.sigmoid(LOGITS[1])
    assert torch.allclose(losses[0], bce(p_click, LABELS[:, 0]).mean())
    assert torch.allclose(losses[1], bce(p_click * p_buy_c, LABELS[:, 1]).mean(), atol=1e-6)
    # Dwell only on the two clicked rows.
    assert torch.allclose(losses[2], ((LOGITS[2][:2] - LABELS[:2, 2]) ** 2).mean())


def test_independent_trains_buy_on_clicked_rows_only(engine: Engine) -> None:
    obj, out = objective(engine, "independent")
    losses = obj(out, batch())
    p_buy_c = torch.sigmoid(LOGITS[1])
    assert torch.allclose(losses[1], bce(p_buy_c[:2], LABELS[:2, 1]).mean(), atol=1e-6)


def test_conditional_loss_weight_adds_the_parent_space_loss(engine: Engine) -> None:
    plain, out = objective(engine, "esmm")
    aux, out_aux = objective(engine, "esmm", conditional_loss_weight=0.5)
    extra = bce(torch.sigmoid(LOGITS[1][:2]), LABELS[:2, 1]).mean()
    difference = aux(out_aux, batch()) - plain(out, batch())
    assert torch.allclose(difference, torch.tensor([0.0, 0.5 * extra.item(), 0.0]), atol=1e-6)


def test_label_weights_scale_positive_rows(engine: Engine) -> None:
    plain, out = objective(engine, "esmm")
    weighted, _ = objective(engine, "esmm", sample="label_weight")
    p = torch.sigmoid(LOGITS[0]) * torch.sigmoid(LOGITS[1])
    # A positive of weight 3 counts exactly like that row three times.
    expected = bce(p[[0, 0, 0, 1, 2, 3]], LABELS[[0, 0, 0, 1, 2, 3], 1]).mean()
    assert torch.allclose(weighted(out, batch())[1], expected, atol=1e-6)
    assert torch.allclose(plain(out, batch())[0], weighted(out, batch())[0])


def test_odds_factor_of_a_weighting_is_measured_on_the_rows_each_loss_sees(
        engine: Engine) -> None:
    weighted, _ = objective(engine, "esmm", sample="label_weight")
    main, aux = weighted.odds_factors(LABELS.numpy(), {})
    assert main.tolist() == [1.0, 3.0, 1.0]  # buy's positives count 3 times; dwell: regression
    assert aux.tolist() == [1.0, 3.0, 1.0]
    # a weighting that varies by row: the ratio of the mean weights (click positives carry
    # 1 + log1p(dwell) here, the negatives 1)
    dwell = engine.components.sample_weightings.get("dwell_time")
    esmm = engine.components.cascades.get("esmm")
    obj = Objective(GRAPH, types.SimpleNamespace(cascade=esmm.factory(
        GRAPH, esmm.parse_params({}))), weighted.losses,
        dwell.factory(GRAPH, dwell.parse_params({"column": "dwell"})))
    main, _ = obj.odds_factors(LABELS.numpy(), {"dwell": LABELS[:, 2].double().numpy()})
    expected = (1 + np.log1p(30.0) + 1 + np.log1p(5.0)) / 2
    assert main[0] == pytest.approx(expected)
    assert main[1] == 1.0


def test_odds_correction_puts_the_factor_in_the_loss_not_in_the_model(engine: Engine) -> None:
    weighted, out = objective(engine, "esmm", sample="label_weight")
    weighted.correct_odds(*weighted.odds_factors(LABELS.numpy(), {}))
    p = torch.sigmoid(LOGITS[0]) * torch.sigmoid(LOGITS[1])
    shifted = torch.sigmoid(torch.log(p / (1 - p)) + math.log(3.0))
    expected = bce(shifted[[0, 0, 0, 1, 2, 3]], LABELS[[0, 0, 0, 1, 2, 3], 1]).mean()
    losses = weighted(out, batch())
    assert torch.allclose(losses[1], expected, atol=1e-6)
    assert torch.allclose(losses[0], bce(torch.sigmoid(LOGITS[0]), LABELS[:, 0]).mean())


@pytest.mark.parametrize("correct", [True, False])
def test_weighted_positives_with_odds_correction_learn_the_real_base_rate(
        engine: Engine, correct: bool) -> None:
    rng = np.random.default_rng(3)
    n = 4000
    click = rng.random(n) < 0.4
    buy = click & (rng.random(n) < 0.25)
    labels = torch.tensor(np.stack([click, buy, np.zeros(n)], axis=1), dtype=torch.float32)
    weighted, _ = objective(engine, "esmm", sample="label_weight")
    if correct:
        weighted.correct_odds(*weighted.odds_factors(labels.numpy(), {}))
    esmm = engine.components.cascades.get("esmm")
    cascade = esmm.factory(GRAPH, esmm.parse_params({}))
    z = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.LBFGS([z], max_iter=200, line_search_fn="strong_wolfe")
    data = Batch(ModelInput(torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0), []),
                 labels, {})

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = [z[0].expand(n), z[1].expand(n), torch.zeros(n)]
        loss = weighted(cascade.compose(logits), data)[:2].sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    p_buy = (torch.sigmoid(z[0]) * torch.sigmoid(z[1])).item()
    rate = buy.mean()
    if correct:
        assert p_buy == pytest.approx(rate, rel=0.01)
    else:  # the weighted optimum: odds three times the real ones
        assert p_buy / (1 - p_buy) == pytest.approx(3 * rate / (1 - rate), rel=0.01)
