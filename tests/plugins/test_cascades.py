from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("kind", ["esmm", "esm2", "independent", "dbmtl"])
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


# -- AITM and DBMTL (issue #18) ----------------------------------------------------------------


def funnel() -> TaskGraph:
    return TaskGraph({"click": spec(), "order": spec(after="click"),
                      "pay": spec(after="order"), "fav": spec(after="click")})


def linear_towers(dims: list[int]) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [torch.nn.Sequential(torch.nn.Linear(d, 1), torch.nn.Flatten(0)) for d in dims]


def test_aitm_attends_over_the_parents_transfer_and_its_own_representation(
        engine: Engine) -> None:
    graph = funnel()
    model = cascade(engine, "aitm", graph, dim=8, calibrator_weight=0.5)
    dims = model.build([5, 5, 5, 5])
    assert dims == [8] * 4 and set(model.transfer) == {"1", "2", "3"}  # children only
    towers = linear_towers(dims)
    x = [torch.randn(6, 5) for _ in range(4)]
    out = model(x, towers)
    # recomputed by hand: order attends over {g(z_click), q_order}
    with torch.no_grad():
        z_click = model.encoders[0](x[0])
        q = model.encoders[1](x[1])
        p = model.transfer["1"](z_click)
        query, key, value = model.attention["1"](torch.stack([p, q], 1)).chunk(3, -1)
        w = torch.softmax((query * key).sum(-1) / 8 ** 0.5, dim=1)
        z_order = (w.unsqueeze(-1) * value).sum(1)
        want = torch.nn.functional.logsigmoid(towers[1](z_order))
    torch.testing.assert_close(out.log_p[:, 1], want)
    assert model.loss_space("order") == "entire"
    # the behavioural-expectation calibrator: per row the sum over child-parent pairs of
    # max(log p(child) - log p(parent), 0), averaged over rows, weighted
    def calibrator(scores: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
        gaps = [scores[:, c] - scores[:, p] + margin for c, p in ((1, 0), (2, 1), (3, 0))]
        return torch.stack(gaps, 1).clamp(min=0).sum(1).mean()

    assert calibrator(out.log_p) > 0  # random towers: some child above its parent
    torch.testing.assert_close(model.auxiliary_loss(), 0.5 * calibrator(out.log_p))
    assert model.auxiliary_loss() is None  # taken once per step
    model.eval()
    model(x, towers)
    assert model.auxiliary_loss() is None  # a training loss only
    # the paper's gap on probabilities, and a margin that penalises a child near its parent
    paper = cascade(engine, "aitm", graph, dim=8, calibrator="probability",
                    calibrator_weight=0.6, calibrator_margin=0.01)
    paper.build([5, 5, 5, 5])
    out = paper(x, towers)
    want = 0.6 * calibrator(out.log_p.exp(), margin=0.01)
    assert want > 0.6 * calibrator(out.log_p.exp())
    torch.testing.assert_close(paper.auxiliary_loss(), want)


def test_dbmtl_towers_read_their_ancestors_hidden_states(engine: Engine) -> None:
    graph = funnel()
    model = cascade(engine, "dbmtl", graph, dim=4)
    dims = model.build([5, 5, 5, 5])
    widths = [layer[0].in_features for layer in model.relations]
    assert widths == [5, 5 + 4, 5 + 8, 5 + 4]  # pay reads order and click
    parent_only = cascade(engine, "dbmtl", graph, dim=4, relation="parent")
    parent_only.build([5, 5, 5, 5])
    assert [layer[0].in_features for layer in parent_only.relations] == [5, 9, 9, 9]
    towers = linear_towers(dims)
    x = [torch.randn(6, 5) for _ in range(4)]
    out = model(x, towers)
    with torch.no_grad():
        h_click = model.relations[0](x[0])
        h_order = model.relations[1](torch.cat([x[1], h_click], 1))
        h_pay = model.relations[2](torch.cat([x[2], h_order, h_click], 1))
        cond_pay = torch.nn.functional.logsigmoid(towers[2](h_pay))
    torch.testing.assert_close(out.cond_log_p[:, 2], cond_pay)
    p = out.log_p.exp()  # composed like ESMM: the child never exceeds its parent
    assert (p[:, 2] <= p[:, 1]).all() and (p[:, 1] <= p[:, 0]).all()


BACKBONES = {
    "shared_bottom": '{ kind = "shared_bottom", hidden = [16] }',
    "mmoe": '{ kind = "mmoe", expert_hidden = [16] }',
    "ple": '{ kind = "ple", expert_hidden = [16] }',
    "mmoe_top2": '{ kind = "mmoe", experts = 6, expert_hidden = [16], top_k = 2 }',
}


@pytest.mark.parametrize(("kind", "backbone"), [
    *((k, b) for k in ('"aitm"', '"dbmtl"') for b in ("shared_bottom", "mmoe", "ple")),
    ('{ kind = "escm2", regulariser = "dr" }', "mmoe"),
    ('{ kind = "escm2", regulariser = "ips" }', "shared_bottom"),
    ('{ kind = "escm2", regulariser = "dr" }', "ple"),
    ('"aitm"', "mmoe_top2"),  # the sparse MoE: exported, it mixes the same k experts
])
def test_learnable_cascades_train_with_every_backbone_and_export(
        kind: str, backbone: str, tmp_path: Path, funnel_dir: Path) -> None:
    pytest.importorskip("onnxruntime")
    from rankengine import ModelInput
    from rankengine.artifact import load_artifact, save_artifact
    from rankengine.backend import backend_class
    from rankengine.config import load_config
    from rankengine.export import example_inputs
    from rankengine.scoring import PredictionModule
    from rankengine.train import train

    from ..conftest import tiny_config_text

    path = tmp_path / "engine.toml"
    path.write_text(tiny_config_text(funnel_dir, model=f"""
[model]
backbone = {BACKBONES[backbone]}
tower = {{ kind = "mlp", hidden = [8] }}
cascade = {kind}
""").replace("[train]\nepochs = 2", "[train]\nepochs = 1"))
    loaded = load_artifact(save_artifact(train(load_config(path), progress=False),
                                         tmp_path / "artifact"))
    inputs = [t.numpy() for t in example_inputs(loaded, 8)]
    with torch.inference_mode():
        want, _ = PredictionModule(loaded.model).predict(
            ModelInput.from_numpy(inputs[0], inputs[1], inputs[2:]))
    backend = backend_class(loaded.engine, "onnxruntime")(loaded)
    got, _ = backend(inputs[0], inputs[1], inputs[2:])
    backend.close()
    assert abs(got - want.double().numpy()).max() < 1e-5


@pytest.mark.parametrize("regulariser", ["ips", "dr"])
def test_escm2_regulariser_reweights_the_clicked_rows_by_inverse_propensity(
        engine: Engine, regulariser: str) -> None:
    from rankengine.train.objective import Objective

    graph = TaskGraph({"click": spec(label="click"), "order": spec(label="order",
                                                                    after="click")})
    model = cascade(engine, "escm2", graph, regulariser=regulariser, weight=0.5, clip=0.1)
    dims = model.build([4, 4])
    towers = linear_towers(dims)
    x = [torch.randn(8, 4) for _ in range(2)]
    out = model(x, towers)
    click = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0.0])
    order = torch.tensor([1, 0, 0, 0, 0, 0, 1, 0.0])
    bce = engine.components.losses.get("bce").factory(None)
    from rankengine import NodePrediction

    error = bce(NodePrediction(out.cond_log_p[:, 1], out.cond_log_q[:, 1], out.value[:, 1]),
                order)
    weights = torch.ones(8)
    got = model.conditional_regulariser(1, error, click == 1, weights, out)
    propensity = out.log_p[:, 0].detach().exp().clamp(min=0.1)
    observed = click * error / propensity
    if regulariser == "ips":
        want = 0.5 * observed.sum() / 8
    else:
        imputed = model._imputed[1]
        doubly = imputed + click * (error - imputed) / propensity
        want = 0.5 * (doubly.sum() + (click * (error - imputed) ** 2 / propensity).sum()) / 8
    torch.testing.assert_close(got, want)
    assert model.conditional_regulariser(0, error, click == 1, weights, out) is None  # root

    class Unweighted:
        def weights(self, labels, extras):  # type: ignore[no-untyped-def]
            return torch.ones_like(labels)

    class Holder:  # what the objective reads of the model
        cascade = model

    objective = Objective(graph, Holder(), [bce, bce], Unweighted())  # type: ignore[arg-type]
    from rankengine.data.batching import Batch, ModelInput

    batch = Batch(ModelInput(torch.zeros(8, 0, dtype=torch.long), torch.zeros(8, 0), []),
                  torch.stack([click, order], 1), {})
    plain = cascade(engine, "esmm", graph)
    plain.build([4, 4])

    class PlainHolder:
        cascade = plain

    base = Objective(graph, PlainHolder(), [bce, bce], Unweighted())  # type: ignore[arg-type]
    torch.testing.assert_close(objective(out, batch) - base(out, batch),
                               torch.stack([torch.zeros(()), want]))
    # with the extra conditional loss too (both read one set of conditional losses)
    for c in (model, plain):
        c.params = c.params.model_copy(update={"conditional_loss_weight": 1.0})
    both = Objective(graph, Holder(), [bce, bce], Unweighted())  # type: ignore[arg-type]
    aux = Objective(graph, PlainHolder(), [bce, bce], Unweighted())  # type: ignore[arg-type]
    assert both.aux and aux.aux
    torch.testing.assert_close(both(out, batch) - aux(out, batch),
                               torch.stack([torch.zeros(()), want]))
