from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rankengine.config import TaskSpec
from rankengine.graph import TaskGraph
from rankengine.pluginmanager import Engine


def spec(**kw: object) -> TaskSpec:
    return TaskSpec.model_validate({"label": "y", **kw})


def cascade(engine: Engine, kind: str, graph: TaskGraph, **params: object):
    component = engine.components.cascades.get(kind)
    return component.factory(graph, component.parse_params(params))


@st.composite
def graphs(draw: st.DrawFn) -> TaskGraph:
    """Random funnels: a forest of binary nodes, some with a `via` sibling."""
    n = draw(st.integers(1, 7))
    specs: dict[str, TaskSpec] = {}
    for i in range(n):
        parent = draw(st.one_of(st.none(), st.integers(0, i - 1))) if i else None
        after = None if parent is None else f"n{parent}"
        siblings = [name for name, s in specs.items() if s.after == after]
        via = draw(st.one_of(st.none(), st.sampled_from(siblings))) if siblings else None
        specs[f"n{i}"] = spec(after=after, via=via)
    return TaskGraph(specs)


logit = st.floats(-30, 30, allow_nan=False, width=32)


@pytest.mark.parametrize("kind", ["esmm", "esm2", "independent"])
@settings(max_examples=40, deadline=None)
@given(graph=graphs(), data=st.data())
def test_child_never_exceeds_parent(engine: Engine, kind: str, graph: TaskGraph,
                                    data: st.DataObject) -> None:
    model = cascade(engine, kind, graph)
    heads = model.heads()
    batch = 16
    outputs = [torch.tensor(data.draw(st.lists(logit, min_size=batch, max_size=batch)))
               for _ in heads]
    out = model.compose(outputs)
    p = out.log_p.exp()
    for i, parent in enumerate(graph.parent_index):
        if parent >= 0:
            assert torch.all(p[:, i] <= p[:, parent]), (kind, graph.to_dict())
    assert torch.all(out.cond_log_p <= 0) and torch.all(out.log_p <= 0)
    # log p and log(1 - p) describe the same probability.
    total = out.log_p.exp() + out.log_q.exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


def test_esm2_heads_and_total_probability(engine: Engine) -> None:
    graph = TaskGraph({"click": spec(), "fav": spec(after="click"),
                       "order": spec(after="click", via="fav"), "pay": spec(after="order")})
    model = cascade(engine, "esm2", graph)
    assert [(h.name, h.role) for h in model.heads()] == [
        ("click", "main"), ("fav", "main"), ("order|fav", "given_via"),
        ("order|not_fav", "given_not_via"), ("pay", "main")]
    logits = [torch.tensor([0.3, -1.0]), torch.tensor([-0.5, 2.0]), torch.tensor([1.0, 0.2]),
              torch.tensor([-2.0, -0.7]), torch.tensor([0.8, -3.0])]
    out = model.compose(logits)
    s = [torch.sigmoid(x) for x in logits]
    p_click, p_fav = s[0], s[1]
    pc_order = p_fav * s[2] + (1 - p_fav) * s[3]
    expected = torch.stack([p_click, p_click * p_fav, p_click * pc_order,
                            p_click * pc_order * s[4]], dim=1)
    assert torch.allclose(out.log_p.exp(), expected, atol=1e-6)
    assert torch.allclose(out.cond_log_p.exp()[:, 2], pc_order, atol=1e-6)


def test_esmm_ignores_via_and_chains(engine: Engine) -> None:
    graph = TaskGraph({"click": spec(), "fav": spec(after="click"),
                       "order": spec(after="click", via="fav")})
    model = cascade(engine, "esmm", graph)
    assert [h.name for h in model.heads()] == ["click", "fav", "order"]
    logits = [torch.tensor([0.5]), torch.tensor([0.1]), torch.tensor([-1.0])]
    out = model.compose(logits)
    expected = torch.sigmoid(logits[0]) * torch.sigmoid(logits[2])
    assert torch.allclose(out.log_p.exp()[:, 2], expected)


def test_independent_loss_spaces(engine: Engine) -> None:
    graph = TaskGraph({"click": spec(), "buy": spec(after="click")})
    parent_space = cascade(engine, "independent", graph)
    assert parent_space.loss_space("click") == "entire"
    assert parent_space.loss_space("buy") == "conditional"
    entire = cascade(engine, "independent", graph, space="entire")
    assert entire.loss_space("buy") == "entire"
    out = entire.compose([torch.tensor([0.0]), torch.tensor([2.0])])
    # Entire-space heads predict p(buy) directly, not p(buy | click) · p(click).
    assert torch.allclose(out.log_p.exp()[:, 1], torch.sigmoid(torch.tensor([2.0])))


def test_log_space_stays_finite_for_extreme_logits(engine: Engine) -> None:
    graph = TaskGraph({"click": spec(), "order": spec(after="click"), "pay": spec(after="order")})
    model = cascade(engine, "esmm", graph)
    big = torch.tensor([-200.0, 200.0])
    out = model.compose([big, big, big])
    for t in (out.log_p, out.log_q, out.cond_log_p, out.cond_log_q):
        assert torch.isfinite(t).all()


def test_regression_node_expectation(engine: Engine) -> None:
    graph = TaskGraph({"click": spec(), "gmv": spec(type="regression", after="click",
                                                    loss="log_mse")})
    model = cascade(engine, "esmm", graph)
    # the loss's link (log_mse: expm1) turns the head output into the value before compose
    link = engine.components.losses.get("log_mse").factory(None).to_value
    model.links = [lambda x: x, link]
    towers = [torch.nn.Identity(), torch.nn.Identity()]
    out = model([torch.tensor([0.0]), torch.log1p(torch.tensor([9.0]))], towers)
    assert torch.allclose(out.conditional(graph)[:, 1], torch.tensor([9.0]), atol=1e-5)
    # Entire-space expectation: p(click) · E[gmv | click] = 0.5 · 9.
    assert torch.allclose(out.entire(graph)[:, 1], torch.tensor([4.5]), atol=1e-5)


def test_fusions(engine: Engine) -> None:
    preds = torch.tensor([[0.5, 0.2, 10.0], [0.1, 0.05, 40.0]])
    tasks = ["click", "pay", "gmv"]

    def fusion(kind: str, **params: object):
        comp = engine.components.fusions.get(kind)
        return comp.factory(tasks, comp.parse_params(params))

    assert torch.allclose(fusion("weighted_sum", weights={"click": 1, "pay": 2})(preds),
                          torch.tensor([0.9, 0.2]))
    assert torch.allclose(fusion("weighted_product", weights={"click": 1, "pay": 0.5})(preds),
                          torch.tensor([0.5 * 0.2 ** 0.5, 0.1 * 0.05 ** 0.5]))
    assert torch.allclose(fusion("expected_value", probability="pay", value="gmv")(preds),
                          torch.tensor([2.0, 2.0]))
    with pytest.raises(ValueError, match=r"^value: unknown task 'price'; tasks: click, pay, gmv$"):
        fusion("expected_value", probability="pay", value="price")
    with pytest.raises(ValueError, match="unknown task"):
        fusion("weighted_sum", weights={"clik": 1})
