"""The training objective: masks, loss spaces, sample weights and the conditional auxiliary loss."""

from __future__ import annotations

import types

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
